# Two commands for people: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The package and what it needs (enough for `make demo`), then what the tests and benchmarks need too.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install test demo bench gallery clean

install: $(DEV_STAMP)

# Re-installs only when the project's metadata changes; torch comes from the local wheel cache where
# pip is configured with one, otherwise from PyPI.
# A .venv without pip (what `python3 -m venv` leaves where Debian's python3-venv is missing) is made again.
$(STAMP): pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV) || \
		{ echo "make: $(PYTHON) -m venv failed; on Debian or Ubuntu install python3-venv first" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77,<81" wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(DEV_STAMP)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	mkdir -p out
	$(BIN)/clipasso sketch examples/chelsea.jpg -o out/demo.svg --preview out/demo.png --encoder lite0
	@echo "Wrote out/demo.svg and out/demo.png"

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/render.py
	$(BIN)/python benchmarks/sketch.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/window.py

gallery: $(DEV_STAMP)
	$(BIN)/python benchmarks/gallery.py -o out/gallery.png

clean:
	rm -rf out build dist *.egg-info .pytest_cache
