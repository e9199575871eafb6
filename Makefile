# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo runs offline: this model's ImageNet weights ship inside the package.
DEMO_MODEL := mobilenet_v1_0.25_224
DEMO_OUT := demo-out

.PHONY: demo test lint install clean

$(BIN)/camcli: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/camcli

install: $(BIN)/camcli

demo: install
	$(BIN)/camcli explain sample_images/ --model $(DEMO_MODEL) --out-dir $(DEMO_OUT)
	$(BIN)/python tools/demo_summary.py $(DEMO_OUT)

# Chromium (for the report tests) is installed first, when missing and allowed: the tests then
# run in a network namespace of their own, with loopback only (tests/netns.py).
test: install
	$(BIN)/python tests/browser.py
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check camcli tests benchmarks tools

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)
