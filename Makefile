# fbcompress: two commands on a fresh machine — `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch comes first and pinned, so pip takes the CPU wheel that lies on this disk instead of a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
QUICKSTART_OUT ?= runs/quickstart

.PHONY: setup test quickstart lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check fbcompress tests bench

# The embedded default end to end: data → teacher → student → ONNX → INT8 → eval → bench → check → report.
# Stages whose inputs are unchanged are reused; an interrupted training stage resumes from its last checkpoint.
quickstart: setup
	$(PY) -m fbcompress quickstart --out $(QUICKSTART_OUT) --bundle exported/quickstart

clean:
	rm -rf $(VENV) .pytest_cache
