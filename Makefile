# neucodec-platform: the commands a newcomer needs. `make test` and `make demo` are the two that matter.
PYTHON      ?= python3.11
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The CPU build these machines carry on disk. GPU users: install your CUDA build of torch into $(VENV) first
# (README, "Install"); an importable torch is never replaced.
TORCH_SPEC  ?= torch==2.13.0
MODEL       ?= hub
SHARDS      ?= 3
BENCH_ARGS  ?=
PYTEST_ARGS ?=
DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install test demo dev bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,fleet]"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/neucodec-platform demo --model $(MODEL) --shards $(SHARDS)

dev: install
	mkdir -p $(DAGSTER_HOME)
	DAGSTER_HOME=$(DAGSTER_HOME) $(VENV)/bin/dagster dev -w workspace.yaml

bench: install
	$(PY) bench/encode_bench.py $(BENCH_ARGS)

clean:
	rm -rf .demo .dagster_home .pytest_cache
