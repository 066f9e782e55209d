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
# Two test processes (pytest-xdist; a module stays in one process; slow modules first, tests/conftest.py):
# most tests wait on subprocesses, Ray start-ups and servers, so two overlap on 2 cores (a clean clone's 500
# tests: 23.6 min instead of 36-48 min serially on the 2-core VM). TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30  # 30 slowest at the end

.PHONY: setup browser quickstart test bench results-cpu clean

setup: $(VENV)/.installed browser

# The browser tests (tests/browser.py) drive the system Chromium through Playwright (no browser download):
# install the Debian package when no browser is there (UNIMAT_CHROMIUM, or the names tests/browser.py looks
# for) and we are root; a no-op once it is there. `make test` sets UNIMAT_REQUIRE_BROWSER=1: a missing
# browser fails the browser tests instead of skipping them (UNIMAT_REQUIRE_BROWSER=0 to skip).
UNIMAT_REQUIRE_BROWSER ?= 1
browser:
	@if [ -n "$$UNIMAT_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || \
		command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
		command -v google-chrome-stable >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "chromium not found: install it (apt-get install chromium) or set UNIMAT_CHROMIUM;" \
		"make test fails the browser tests without it (UNIMAT_REQUIRE_BROWSER=0 skips them)"; fi

$(VENV)/.installed: pyproject.toml setup.py $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c $(LOCK) -e ".[all,test]"  # all = ray, serve, eval (the `train` extra is DeepSpeed, next line)
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c $(LOCK) deepspeed
	$(PIP) check
	touch $@

quickstart: setup
	$(VENV)/bin/unimat quickstart --out $(OUT)

test: setup
	UNIMAT_REQUIRE_BROWSER=$(UNIMAT_REQUIRE_BROWSER) RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled \
		$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python -m bench

# The CPU rows of the README's results table (about 3.5 h on 2 cores): the released transformer models
# (Perov-5 with the CSP protocol, Carbon-24), then the first release's tiny U-Nets and a width ablation on
# Carbon-24, RESULTS_NUM unconditional samples each (the paper: 10,000; `--num 10000` on a GPU machine).
RESULTS ?= results/cpu
RESULTS_NUM ?= 1000
UNIMAT = $(VENV)/bin/unimat
results-cpu: setup
	$(UNIMAT) train --config cluster/jobs/results/perov5_transformer_cpu.yaml
	$(UNIMAT) train --config cluster/jobs/results/carbon24_transformer_cpu.yaml
	$(UNIMAT) model sampling out/results/perov5_transformer_cpu/checkpoints --distinct-compositions on \
		--out out/results/perov5_transformer_cpu/release.pt --overwrite
	$(UNIMAT) results evaluate --checkpoint out/results/perov5_transformer_cpu/release.pt --dataset perov_5 \
		--num $(RESULTS_NUM) --csp --label "transformer small (CPU, 1.6M)" --out $(RESULTS)/perov5_transformer_cpu
	$(UNIMAT) model sampling out/results/carbon24_transformer_cpu/checkpoints/step_00010000 --sampler ddim \
		--steps 100 --eta 1 --noise-scale 0.3 --restart 100:20 \
		--autoguide-with out/results/carbon24_transformer_cpu/checkpoints/step_00006000 --autoguidance 6 \
		--autoguidance-max-t 495 --out out/results/carbon24_transformer_cpu/release.pt --overwrite
	$(UNIMAT) results evaluate --checkpoint out/results/carbon24_transformer_cpu/release.pt \
		--dataset carbon_24 --num $(RESULTS_NUM) \
		--label "transformer small (CPU, 1.6M)" --out $(RESULTS)/carbon24_transformer_cpu
	$(UNIMAT) train --config cluster/jobs/results/carbon24_tiny_cpu.yaml
	$(UNIMAT) train --config cluster/jobs/results/perov5_tiny_cpu.yaml
	$(UNIMAT) train --config cluster/jobs/results/carbon24_tiny_cpu.yaml out_dir=out/results/carbon24_w16_cpu \
		"model.overrides={dim: 16, attn_head_dim: 8}"
	$(UNIMAT) train --config cluster/jobs/results/carbon24_tiny_cpu.yaml out_dir=out/results/carbon24_w48_cpu \
		"model.overrides={dim: 48}"
	$(UNIMAT) results evaluate --checkpoint out/results/carbon24_tiny_cpu/checkpoints --dataset carbon_24 \
		--num $(RESULTS_NUM) --energy-samples 30 --relax-steps 200 --label "tiny (CPU, 0.77M)" \
		--out $(RESULTS)/carbon24_tiny_cpu
	$(UNIMAT) results evaluate --checkpoint out/results/perov5_tiny_cpu/checkpoints --dataset perov_5 \
		--num $(RESULTS_NUM) --energy-samples 50 --relax-steps 200 --conditional 10 --per-composition 3 \
		--label "tiny (CPU, 0.77M)" --out $(RESULTS)/perov5_tiny_cpu
	for w in 16 48; do $(UNIMAT) results evaluate --dataset carbon_24 --num $(RESULTS_NUM) --limit-train 500 \
		--checkpoint out/results/carbon24_w$${w}_cpu/checkpoints --label "tiny width $$w (CPU)" \
		--out $(RESULTS)/carbon24_w$${w}_cpu || exit 1; done
	$(UNIMAT) results table $(RESULTS)/*/result.json --out $(RESULTS)/table.md --ablation $(RESULTS)/ablation.png

clean:
	rm -rf $(VENV) out .pytest_cache
