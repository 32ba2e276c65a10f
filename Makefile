# The venv is made on first use; torch is pinned so pip takes the CPU build on this machine's disk.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

.PHONY: test lint demo bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[all,test,ray]"
	# The reference implementation for parity tests; its clip.py needs torchvision, so no deps.
	$(BIN)/python -m pip install -q --no-deps openai-clip==1.0.1
	touch $(STAMP)

# Lint first: a lint or type error fails `make test` in a minute or two, before the long pytest run.
# mypy reads [tool.mypy] in pyproject.toml; a cold run (CI) takes about 90 s of one core, a warm one
# (.mypy_cache) a few seconds.
lint: $(STAMP)
	$(BIN)/python -m ruff check clip_embeddings
	$(BIN)/python -m mypy

test: lint
	$(BIN)/python -m pytest -q -ra

demo: $(STAMP)
	$(BIN)/python -m clip_embeddings.demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
