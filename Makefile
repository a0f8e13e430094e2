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

# The embedded default end to end: synthetic data → teacher → eval → 2-layer VSL student → eval → ONNX bundle.
# Every training stage resumes from its last complete checkpoint, so an interrupted run continues where it stopped.
quickstart: setup
	test -f $(QUICKSTART_OUT)/data/dataset.json || \
		$(PY) -m fbcompress data synth --recipe recipes/quickstart.yaml --out $(QUICKSTART_OUT)/data
	$(PY) -m fbcompress train-teacher --recipe recipes/quickstart.yaml --data $(QUICKSTART_OUT)/data \
		--out $(QUICKSTART_OUT)/teacher --resume
	$(PY) -m fbcompress eval --model $(QUICKSTART_OUT)/teacher --data $(QUICKSTART_OUT)/data \
		--json $(QUICKSTART_OUT)/teacher-eval.json
	$(PY) -m fbcompress distill --recipe recipes/quickstart.yaml --teacher $(QUICKSTART_OUT)/teacher \
		--data $(QUICKSTART_OUT)/data --out $(QUICKSTART_OUT)/student --resume
	$(PY) -m fbcompress eval --model $(QUICKSTART_OUT)/student --data $(QUICKSTART_OUT)/data \
		--json $(QUICKSTART_OUT)/student-eval.json
	$(PY) -m fbcompress export --model $(QUICKSTART_OUT)/student --target onnx --out exported/quickstart \
		--data $(QUICKSTART_OUT)/data

clean:
	rm -rf $(VENV) .pytest_cache
