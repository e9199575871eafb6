# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/camcli: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/camcli

install: $(BIN)/camcli

demo: install
	$(BIN)/camcli explain sample_images/

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check camcli tests benchmarks tools

clean:
	rm -rf $(VENV) build *.egg-info
