"""Per-lab calibration (measure.py) and the migration model that turns it into limits (model.py)."""
