# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing. An already-installed torch is kept (GPU users
# install their own first); otherwise the CPU wheel torch==2.13.0 is used.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.floater-installed
TORCH_VERSION ?= 2.13.0

.PHONY: venv test demo demo-full demo-quick bench-speed clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install numpy cython setuptools wheel
	# Without --no-build-isolation pip pulls a multi-GB CUDA torch into the build env.
	$(PIP) install --no-build-isolation fairseq-fixed==0.12.3.1
	$(PIP) install torchdiffeq sacrebleu sentencepiece matplotlib pytest pytest-xdist hypothesis
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: venv
	# one BLAS/OpenMP thread per worker: two workers share two cores (fairseq subprocesses inherit it)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

demo: venv
	$(PY) -m floater_fairseq.cli.demo

demo-full: venv
	$(PY) -m floater_fairseq.cli.demo --full --out demo-full --results results/demo-full --readme ''

demo-quick: venv
	$(PY) -m floater_fairseq.cli.demo --quick --out demo-quick --results '' --readme ''

bench-speed: venv
	bash scripts/bench-speed.sh

clean:
	rm -rf $(VENV) build *.egg-info
