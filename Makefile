# Quick start: `make test` (harness tests + smoke suites) or `make acceptance` (all suites).
# Both run `make setup` first, which is quick when everything is installed.
PY := .venv/bin/python
RUN_ID := $(shell date +%Y%m%d-%H%M%S)-$$PPID
PYTEST_ARGS ?= -rfEs

.PHONY: setup check test acceptance gate hotpatch-test vagrant-test up down status bench clean

setup:
	@bash scripts/setup.sh

# The harness's tests that need no lab, no guest and no QEMU build (about a minute on 2 cores): the loop for people
# changing the harness. A test that makes a lab is marked `lab` (tests/conftest.py), one that needs a QEMU build `build`.
check: setup
	$(PY) -m pytest -n auto tests/ -m "not lab and not build and not slow and not vagrant" $(PYTEST_ARGS)

# Harness tests plus the smoke selection of the suites; .ci/run runs exactly this.
test: setup
	LAB_RUN_ID=$(RUN_ID) $(PY) -m pytest -n auto --dist loadgroup tests/ suites/ -m "not slow and not vagrant and (smoke or not acceptance)" $(PYTEST_ARGS)

# Every suite on the default lab; the HTML report's path is printed at the end (docs/reports.md).
acceptance: setup
	LAB_RUN_ID=$(RUN_ID) $(PY) -m lab up
	LAB_RUN_ID=$(RUN_ID) $(PY) -m pytest suites/ -n auto --dist loadgroup -m "not slow and not vagrant" $(PYTEST_ARGS); \
	  status=$$?; index=$(CURDIR)/reports/$(RUN_ID)/index.html; \
	  if [ -f $$index ]; then echo "report: $$index"; \
	  else echo "report: not written; rebuild it with $(PY) -m lab report reports/$(RUN_ID)"; fi; exit $$status

# The release gate: the same selection on two stacks of labs/gate.yaml, compared; exit 1 on a regression
# (docs/gate.md). GATE_ARGS is the pytest selection (default: the live suite's idle and dirty scenarios,
# --repeat 6), e.g. GATE_ARGS='-- suites/live_migration -k precopy-idle --repeat 6'.
BASELINE ?= system
CANDIDATE ?= bookworm-backports
GATE_LAB ?= labs/gate.yaml
GATE_ARGS ?=

gate: setup
	$(PY) -m lab --lab-config $(GATE_LAB) gate --baseline $(BASELINE) --candidate $(CANDIDATE) --out reports/gate-$(RUN_ID) $(GATE_ARGS)

# Hot patches end to end (slow: QEMU source build + libcare-patch-make); needs libcareplus on PATH.
# Two workers: kpatch builds take turns (they share the build tree and swap cc), while one builds the other runs
# its QEMU and loads its patch.
hotpatch-test: setup
	LAB_RUN_ID=$(RUN_ID) $(PY) -m pytest -n auto --dist loadgroup suites/hotpatch tests/test_hotpatch_driver.py tests/test_hotpatch_build_steps.py $(PYTEST_ARGS)

# The Vagrant lab end to end (slow; not part of `make test` / .ci/run): the fast Vagrant and
# provisioning checks, then the box (built locally if missing), `lab up` with the Vagrant backend
# (from the provisioned-VM cache when the same lab.yaml made one), the playbook run a second time
# (must change nothing), the preflight suite and the precopy-idle live migration on the lab, and
# `lab down` (checked to leave no VM, network, volume or daemon; the box and cache are kept:
# `python -m lab.backends.vagrant.cache clear`). Each run's steps and load: reports/vagrant-timings.json.
# VAGRANT_LAB=labs/vagrant-example.yaml for a machine that can download boxes and has KVM. The limits are
# the repo's thresholds.yaml: the model's, from this lab's own calibration (docs/live.md), as on every lab.
VAGRANT_LAB ?= labs/vagrant-tcg.yaml
VAGRANT_THRESHOLDS ?= thresholds.yaml

vagrant-test: setup
	LAB_RUN_ID=$(RUN_ID) LAB_VAGRANT_CONFIG=$(VAGRANT_LAB) LAB_VAGRANT_THRESHOLDS=$(VAGRANT_THRESHOLDS) LAB_VAGRANT_TIMINGS=reports/vagrant-timings.json \
	  $(PY) -m pytest tests/test_vagrant_settings.py tests/test_vagrant_box.py tests/test_vagrant_lab.py tests/test_provision.py tests/test_stack_role.py -p no:randomly -rs $(PYTEST_ARGS)

up: setup
	$(PY) -m lab up

down:
	$(PY) -m lab down

status:
	$(PY) -m lab status

bench: setup
	$(PY) benchmarks/lab_bench.py
	$(PY) benchmarks/live_bench.py
