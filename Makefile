# Everything a fresh machine needs: `make demo` and `make test` build the venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SDL_VIDEODRIVER := offscreen
export MUJOCO_GL := egl
export PYTHONHASHSEED := 0

.PHONY: venv demo lint test test-slow bench bench-safeguards docs clean

venv: $(STAMP)

# torch goes in first and pinned: otherwise a dependency pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mesaguard demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs examples
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/guard_overhead.py
	$(BIN)/python benchmarks/detection_delay.py
	$(BIN)/python benchmarks/false_alarms.py
	$(BIN)/python benchmarks/scenario_speed.py
	$(BIN)/python benchmarks/deployment.py
	$(BIN)/python benchmarks/deployment_cheetah.py
	$(BIN)/python benchmarks/greenberg_mannor.py
	$(BIN)/python benchmarks/mapie_martingales.py

# Long: the shield (~25 min, the cheetah's ~6 more), the quantilizer's q-curve (~12 min), 15 PPO trainings for the
# impact penalty (~40 min), every safeguard's cost (~8 min).
bench-safeguards: $(STAMP)
	$(BIN)/python benchmarks/scope.py
	$(BIN)/python benchmarks/scope.py --continuous
	$(BIN)/python benchmarks/shield.py
	$(BIN)/python benchmarks/shield.py --cheetah
	$(BIN)/python benchmarks/prevention.py
	$(BIN)/python benchmarks/transition_scope.py
	$(BIN)/python benchmarks/shield_simulators.py
	$(BIN)/python benchmarks/quantilizer.py
	$(BIN)/python benchmarks/quantilizer_bases.py
	$(BIN)/python benchmarks/impact.py
	$(BIN)/python benchmarks/safeguard_cost.py

docs: $(STAMP)
	$(BIN)/python docs/build.py

clean:
	rm -rf $(VENV) runs
