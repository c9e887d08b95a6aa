# Set-up and test entry points. `make test` builds .venv with a CPU-only torch (no CUDA wheels pulled)
# and runs the test suite; `make test-compat` runs it again on the oldest supported versions (CI runs
# both); `make test-system` runs it with an interpreter that already has torch/triton (e.g. a GPU
# machine with CUDA torch): `make test-system PYTHON=python3`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.7.1
TORCHVISION_VERSION ?= 0.28.0
NUMPY_SPEC ?= numpy
# transformers for the [hf] extra (tests/test_integration_hf.py): the newest that resolves
TRANSFORMERS_SPEC ?= transformers
# 1: fail if pip brought a CUDA torch (only the pinned default has a CPU wheel here)
REQUIRE_CPU_TORCH ?= 1
EXTRAS ?= test
PYTEST_ARGS ?=
# pytest-xdist workers (a test file stays on one worker: its module fixtures run once)
PYTEST_JOBS ?= auto
CONSTRAINTS := $(abspath $(VENV))/constraints.txt

# The version matrix's second row: the oldest versions supported (pyproject's lower bounds), which
# are the GPU image's. PyPI has only the CUDA build of torch 2.11 (+ ~2.5 GB of nvidia-* wheels; it
# runs on CPU). Triton 3.6's interpreter needs numpy < 2.4.
COMPAT_VENV ?= .venv-compat
COMPAT_TORCH ?= 2.11.0
COMPAT_TRITON ?= 3.6.0
COMPAT_TORCHVISION ?= 0.26.0
COMPAT_NUMPY ?= numpy<2.4
# pyproject's lower bound for [hf]: 5.18.0 passes tests/test_integration_hf.py on torch 2.11 and 2.13;
# 5.17.0 fails it (its Dinov2 attention and layer forward take no extra positional argument), as do
# the older 5.0.0, 5.5.0 and 5.10.1 tried.
COMPAT_TRANSFORMERS ?= transformers==5.18.0
# The whole suite but the slow parts that the current row covers and that hold nothing
# version-specific of the GPU image: the benchmark-suite smoke run (~1 min), the benchmark phases
# stopped by SIGTERM (~17 s; pytest and pytest-benchmark are the same versions in both rows), the
# SIGKILL-and-resume training test (~35 s of training subprocesses), the sm_80 AOT compile (~2.5 min
# cold; sm_90, the GPU image's target, stays), the many-small-tiles conv test (~33 s in the
# interpreter; tile counts are this project's index math, the same on every version), the DDP
# RNG-and-resume test (~20 s: three 2-rank runs; torch.distributed's part, gloo collectives and
# all_gather_object, stays under test in the bad-video DDP test) and two thirds of the
# property-based examples (profile "compat": the first 4 of the Triton backend's 12, ~30 s).
COMPAT_PYTEST_ARGS ?= --deselect tests/benchmarks/test_suite_and_report.py::test_benchmark_rows_carry_metrics \
	--deselect tests/benchmarks/test_suite_and_report.py::test_report_writes_table_and_chart \
	--deselect tests/benchmarks/test_phase_stop.py \
	--deselect tests/test_train_crash.py \
	--deselect tests/test_train.py::test_ddp_ranks_draw_their_own_dropout_masks_and_resume_exactly \
	--deselect 'tests/csrc_triton/test_aot.py::test_aot_compile_all_variants[80]' \
	--deselect tests/ops/test_dwconv_tokens.py::test_triton_many_small_tiles \
	--hypothesis-profile=compat

# Not in CI (the two rows above are): the newest releases on PyPI, run by hand with `make test-newest`.
# PyPI has only the CUDA build of these torch versions (+ ~2.5 GB of nvidia-*; it runs on CPU).
# torchvision 0.29.2, the newest, requires torch >= 2.14.
NEWEST_VENV ?= .venv-newest
NEWEST_TORCH ?= 2.15.0
NEWEST_TRITON ?= 3.9.0
NEWEST_TORCHVISION ?= 0.29.2

.PHONY: venv test test-compat test-newest test-system bench clean demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone, pinned exactly: anything looser pulls the CUDA build and ~2.5 GB of nvidia-*.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	printf 'torch==$(TORCH_VERSION)\ntorchvision==$(TORCHVISION_VERSION)\ntriton==$(TRITON_VERSION)\n$(NUMPY_SPEC)\n$(TRANSFORMERS_SPEC)\n' > $(CONSTRAINTS)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q '$(NUMPY_SPEC)' triton==$(TRITON_VERSION)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -c "import torch, sys; cpu = not torch.version.cuda; sys.exit('a CUDA torch came in: ' + torch.__version__) if $(REQUIRE_CPU_TORCH) and not cpu else print('torch', torch.__version__, '(CPU build)' if cpu else '(CUDA build, run on CPU)')"
	touch $@

test: venv
	$(PY) -m pytest -q -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-compat:
	$(MAKE) --no-print-directory test VENV=$(COMPAT_VENV) TORCH_VERSION=$(COMPAT_TORCH) \
		TRITON_VERSION=$(COMPAT_TRITON) TORCHVISION_VERSION=$(COMPAT_TORCHVISION) NUMPY_SPEC='$(COMPAT_NUMPY)' \
		TRANSFORMERS_SPEC='$(COMPAT_TRANSFORMERS)' \
		REQUIRE_CPU_TORCH=0 PYTEST_ARGS="$(COMPAT_PYTEST_ARGS) $(PYTEST_ARGS)"

test-newest:
	$(MAKE) --no-print-directory test VENV=$(NEWEST_VENV) TORCH_VERSION=$(NEWEST_TORCH) \
		TRITON_VERSION=$(NEWEST_TRITON) TORCHVISION_VERSION=$(NEWEST_TORCHVISION) REQUIRE_CPU_TORCH=0

test-system:
	PYTHONPATH=$(CURDIR):$$PYTHONPATH $(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(PY) -m stadapter_fast.demo

bench: venv
	$(PY) -m pytest benchmarks/ --benchmark-only -q

clean:
	rm -rf $(VENV) $(COMPAT_VENV) $(NEWEST_VENV) .pytest_cache .benchmarks *.egg-info build dist .gpu-deps
