# The two commands the README shows.  Both create .venv when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch==2.13.0 first, spelled exactly: pip takes that CPU build from local
# disk here; any other spelling resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[torch,dev]'
	touch $(STAMP)

# The demo trains on Fashion-MNIST from the Debian package dataset-fashion-mnist
# (IDX files under /usr/share/datasets/fashion-mnist); install it when absent.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

demo: $(STAMP)
	@test -d $(FASHION_MNIST) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }
	$(BIN)/cmz demo

# Two invocations: NUMBA_ENABLE_CUDASIM must be set before numba is imported,
# so the CUDA simulator tests (tests/cuda_sim) run in a process of their own.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -n 2 tests/cuda_sim

clean:
	rm -rf $(VENV) out build *.egg-info
