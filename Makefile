# unimat-dist: one-command setup, quickstart and tests on a fresh machine.
#   make quickstart   # install everything into .venv, then run the end-to-end main job
#   make test         # install everything into .venv, then run the test suite
# CPU machines get the CPU torch wheel (TORCH=torch==2.13.0). On a GPU cluster pass your CUDA build,
# e.g. `make setup TORCH="torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip
LOCK = requirements/lock-cpu.txt
OUT ?= out/quickstart
PYTEST_ARGS ?=

.PHONY: setup quickstart test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c $(LOCK) -e ".[all,test]"
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c $(LOCK) deepspeed
	$(PIP) check
	touch $@

quickstart: setup
	$(VENV)/bin/unimat quickstart --out $(OUT)

test: setup
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) out .pytest_cache
