# Two entry points a newcomer needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= build/extractor.pt

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Until trained weights ship (models/weights/extractor.pt), run exports an untrained extractor.
run: install
	$(PY) -m app.cli export --output $(MODEL) --width 16 --if-missing
	$(PY) -m app.cli demo-audio build/demo.flac --seconds 45
	$(PY) -m app.cli embed build/demo.flac --model $(MODEL)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/extractor.py

clean:
	rm -rf build .pytest_cache
