# The README's two commands: `make demo` (the main job on the shipped model) and `make test`.
# Both set everything up first on a fresh machine: a .venv with torch installed before anything
# that depends on it (else pip pulls a multi-GB CUDA build), the package, and the training corpus.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
CORPUS := /usr/share/doc/python3.11/html/_sources
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
MODEL := models/cosmoe-default.pt
ARTIFACT := artifact
PROMPT ?= The list type is
BUDGET ?= 50%

.PHONY: setup corpus demo test lint clean

setup: $(STAMP) corpus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $@

# the default training corpus: Debian's Python documentation sources (PSF License 2.0)
corpus:
	@test -d $(CORPUS) || { echo "installing Debian's python3.11-doc (the training corpus)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q python3.11-doc >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3.11-doc; }; }

# the main job: export the shipped model (int4, both backends, verified), then run it with half
# of the experts' bytes allowed in memory, on each backend
demo: setup $(ARTIFACT)/manifest.json
	$(BIN)/edge-run $(ARTIFACT) --backend executorch --memory-budget $(BUDGET) --prompt "$(PROMPT)"
	$(BIN)/edge-run $(ARTIFACT) --backend onnx --memory-budget $(BUDGET) --prompt "$(PROMPT)"

$(ARTIFACT)/manifest.json: $(MODEL) | setup
	$(BIN)/edge-export $(MODEL) --quant int4 --out $(ARTIFACT) --force

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	bash scripts/test_android_core.sh

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) artifact runs bench-results
