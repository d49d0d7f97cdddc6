# Everything a fresh Debian 12 machine needs, from this repository alone:
#   make demo   set up, build the sample targets, cover the sqlite workload, print the report paths
#   make test   set up, build the sample targets, lint, run the whole test suite
#   make lint   ruff on everything, mypy on bpfcov/
#   make bench  the benchmarks in bench/ (see bench/README.md)
PYTHON := .venv/bin/python
STAMP := .venv/.installed
DEMO_OUT := demo-out

.PHONY: setup system targets demo lint test bench clean

setup: system $(STAMP)

# Cheap when everything is installed: the script checks before it installs.
system:
	@bash scripts/setup-system.sh

# The venv sees Debian's bcc through --system-site-packages; reinstalled only when the
# project's dependencies change.
$(STAMP): pyproject.toml | system
	/usr/bin/python3 -m venv --system-site-packages .venv
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test,lint,postgresql]'
	touch $@

targets: setup
	@$(MAKE) --no-print-directory -s -C sample_targets

demo: targets
	.venv/bin/bpfcov run -o $(DEMO_OUT) -- sample_targets/build/sqlite/workload 200000
	@echo
	@echo "lcov tracefile: $(DEMO_OUT)/coverage.info"
	@echo "HTML report:    $(DEMO_OUT)/html/index.html"

lint: setup
	.venv/bin/ruff check bpfcov tests bench
	.venv/bin/mypy

test: targets lint
	$(PYTHON) -m pytest -p no:cacheprovider --cov=bpfcov --cov-report=term $(PYTEST_ARGS) tests

bench: targets
	$(PYTHON) bench/run.py

clean:
	rm -rf .venv $(DEMO_OUT) bpfcov-out
	@$(MAKE) --no-print-directory -s -C sample_targets clean
