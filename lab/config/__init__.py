"""Configuration files as validated, immutable models: lab.yaml (lab), its `vagrant:` section (vagrant),
thresholds.yaml (thresholds), the hot patch settings and limits (hotpatch); shared field types (common)
and the validation glue that words every error as one line naming the field (validation)."""
