"""The migration model (model.py): what a migration should cost from a lab's calibration and a scenario's
settings. Pure arithmetic; the calibration itself is measured by lab/migration/calibrate.py."""
