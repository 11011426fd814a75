# Quick start: `make test` (harness tests + smoke suites) or `make acceptance` (all suites).
# Both run `make setup` first, which is quick when everything is installed.
PY := .venv/bin/python
RUN_ID := $(shell date +%Y%m%d-%H%M%S)-$$PPID
PYTEST_ARGS ?=

.PHONY: setup test acceptance hotpatch-test up down status bench clean

setup:
	@bash scripts/setup.sh

# Harness tests plus the smoke selection of the suites; .ci/run runs exactly this.
test: setup
	LAB_RUN_ID=$(RUN_ID) $(PY) -m pytest -n auto --dist loadgroup tests/ suites/ -m "not slow and not vagrant and (smoke or not acceptance)" $(PYTEST_ARGS)

# Every suite on the default lab; the report folder is printed at the end.
acceptance: setup
	LAB_RUN_ID=$(RUN_ID) $(PY) -m lab up
	LAB_RUN_ID=$(RUN_ID) $(PY) -m pytest suites/ -n auto --dist loadgroup -m "not slow and not vagrant" $(PYTEST_ARGS); \
	  status=$$?; echo "report: reports/$(RUN_ID)/"; exit $$status

# Hot patches end to end (slow: QEMU source build + libcare-patch-make); needs libcareplus on PATH.
hotpatch-test: setup
	LAB_RUN_ID=$(RUN_ID) $(PY) -m pytest suites/hotpatch tests/test_hotpatch_driver.py $(PYTEST_ARGS)

up: setup
	$(PY) -m lab up

down:
	$(PY) -m lab down

status:
	$(PY) -m lab status

bench: setup
	$(PY) benchmarks/lab_bench.py
	$(PY) benchmarks/live_bench.py
