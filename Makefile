# Set-up and test entry points. `make test` builds .venv with a CPU-only torch (no CUDA wheels pulled)
# and runs the test suite; `make test-system` runs it with an interpreter that already has torch/triton
# (e.g. a GPU machine with CUDA torch): `make test-system PYTHON=python3`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.7.1
TORCHVISION_VERSION ?= 0.28.0
EXTRAS ?= test
PYTEST_ARGS ?=
CONSTRAINTS := $(abspath $(VENV))/constraints.txt

.PHONY: venv test test-system bench clean demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone, pinned exactly: anything looser pulls the CUDA build and ~2.5 GB of nvidia-*.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	printf 'torch==$(TORCH_VERSION)\ntorchvision==$(TORCHVISION_VERSION)\ntriton==$(TRITON_VERSION)\n' > $(CONSTRAINTS)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q numpy triton==$(TRITON_VERSION)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -c "import torch, sys; sys.exit('a CUDA torch came in: ' + torch.__version__) if torch.version.cuda else print('torch', torch.__version__, '(CPU build)')"
	touch $@

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-system:
	PYTHONPATH=$(CURDIR):$$PYTHONPATH $(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) -m stadapter_fast.demo

bench: venv
	$(PY) -m pytest benchmarks/ --benchmark-only -q

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks *.egg-info
