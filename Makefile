# fbcompress: two commands on a fresh machine — `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch comes first and pinned, so pip takes the CPU wheel that lies on this disk instead of a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
QUICKSTART_OUT ?= runs/quickstart

SERVE_ENV ?= .venv-serve

.PHONY: setup serve-env test test-fast mutation quickstart lint clean

# uv installs in parallel, which shortens the set-up that the quickstart's time budget includes. --compile-bytecode
# because this machine sets PYTHONDONTWRITEBYTECODE: without .pyc files every stage process would compile torch
# and transformers again (measured: bench/results/amd-epyc-2c-2026-11-29-quickstart-uv/).
# uv does not read pip's config, so the folder where pip finds the CPU torch wheel (find-links) is passed on;
# without uv on the index, the same steps run with pip.
UV_INSTALL = $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@links="$${PIP_FIND_LINKS:-$$($(PY) -m pip config get global.find-links 2>/dev/null)}"; set -x; \
	if $(PY) -m pip install -q uv; then \
		$(UV_INSTALL) $${links:+--find-links "$$links"} "$(TORCH_SPEC)" && $(UV_INSTALL) -e ".[dev]"; \
	else \
		$(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q "$(TORCH_SPEC)" && \
		$(PY) -m pip install -q -e ".[dev]"; \
	fi
	touch $@

setup: $(VENV)/.installed

# The serving environment of the real Triton server tests and benchmark (fbcompress/serving/triton_server.py says
# why it is its own: the nvidia-pytriton wheel, which carries tritonserver and its Python backend, needs numpy < 2).
# It holds what a bundle's Triton Python models import, and tritonclient: the requirements every bundle ships. A
# failed install is said, not fatal: the tests that need it then skip, naming it.
SERVE_REQUIREMENTS = fbcompress/export/triton_files/requirements.txt

$(SERVE_ENV)/.installed: $(VENV)/.installed $(SERVE_REQUIREMENTS)
	@$(PYTHON) -m venv $(SERVE_ENV) && \
	{ $(VENV)/bin/uv pip install -q --python $(SERVE_ENV)/bin/python -r $(SERVE_REQUIREMENTS) 2>/dev/null \
	  || $(SERVE_ENV)/bin/pip install -q -r $(SERVE_REQUIREMENTS); } \
	&& touch $@ || echo "warning: the serving environment did not install: the Triton server tests will skip" >&2

serve-env: $(SERVE_ENV)/.installed

# Tests write bytecode even where the machine sets PYTHONDONTWRITEBYTECODE: the package and the tests are not in
# the venv that --compile-bytecode fills, and would be compiled again in every pytest and CLI process.
TEST_ENV = PYTHONDONTWRITEBYTECODE=

test: setup serve-env
	$(TEST_ENV) $(PY) -m pytest

# The fast tier: unit tests without the slow ones (pytest marker `slow`, see tests/conftest.py), for the edit loop
# and for mutation testing (bench/mutation.sh runs the same selection in one process, as mutmut needs). In
# pytest-xdist workers: importing torch and transformers is a fixed cost per process, which workers pay in
# parallel (measured: bench/results/amd-epyc-2c-2026-12-02-test-tiers/).
test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -n auto --maxprocesses 4

# Mutation testing of the core modules (a benchmark, not CI): bench/mutation.sh, results in bench/results/.
mutation: setup
	$(PY) -m pip install -q "mutmut==3.8.1"
	bash bench/mutation.sh $(MODULES)

lint: setup
	$(VENV)/bin/ruff check fbcompress tests bench

# The embedded default end to end: data → teacher → student → ONNX → INT8 → eval → bench → check → report.
# Stages whose inputs are unchanged are reused; an interrupted training stage resumes from its last checkpoint.
quickstart: setup
	$(PY) -m fbcompress quickstart --out $(QUICKSTART_OUT) --bundle exported/quickstart

clean:
	rm -rf $(VENV) $(SERVE_ENV) .pytest_cache
