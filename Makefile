# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-fast test-all lint bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q 'torch>=2.11,<2.15' 'torchvision>=0.26,<0.30'
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Offline there are no ImageNet weights: the demo's pretrained trials load PLACEHOLDER files (random init under
# torchvision's file names) from a demo-only TORCH_HOME. They exercise the loading path; the report flags them.
DEMO_TORCH_HOME ?= $(CURDIR)/.cache/demo-torch

demo: $(STAMP)
	TORCH_HOME=$(DEMO_TORCH_HOME) $(BIN)/python -m harness weights placeholder alexnet resnet152 inception_v3
	TORCH_HOME=$(DEMO_TORCH_HOME) $(BIN)/python -m harness run grids/paper.yaml --profile smoke
	$(BIN)/python -m harness report results/paper

# Two pytest-xdist workers, one per core of a small machine, each taking whole test files: a file's fixtures are
# built once, and the tests that read the finished grid share one file. `pytest` alone runs them in one process.
XDIST ?= -n 2 --dist loadfile

# The default suite: the unit layer and the integration layer, without -m slow and -m gpu (about 5 minutes).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(XDIST)

# The unit layer alone: no Ray, no subprocess (about a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) tests/unit

# Everything that runs without a GPU: the default suite and -m slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m 'not gpu'

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m pytest tests/bench -m bench --benchmark-enable -p no:cacheprovider

clean:
	rm -rf results reports .pytest_cache
