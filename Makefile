# make run: create .venv, install, run the default pipeline offline. make test: the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
TORCH ?= torch==2.13.0
# Where torch comes from. Empty: pip's configured index. On Linux, PyPI's torch wheels are CUDA builds
# (several GB); for the CPU build: make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install run test test-slow clean browser

$(BIN)/pipeline: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned: an unpinned torch would pull the newest multi-GB CUDA build.
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/pipeline

install: $(BIN)/pipeline

run: install
	$(BIN)/pipeline run $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Headless Chromium for the report's browser test and `pipeline report-screenshot` (Debian packages;
# the test skips without it). A CJK font so the Chinese paragraphs render. Skipped once installed.
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium already installed"; else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver fonts-wqy-zenhei; fi

clean:
	rm -rf data/prepared data/prepared-tiny models/*/ models/latest
