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

# The service on the embedded store (SQLite in ./data), on http://127.0.0.1:8000.
# Until trained weights ship (models/weights/extractor.pt), run exports an untrained extractor to build/.
run: install
	@if [ -f models/weights/extractor.pt ]; then \
		$(VENV)/bin/coverid serve; \
	else \
		$(PY) -m app.cli export --output $(MODEL) --width 16 --if-missing && \
		COVERID_MODEL_PATH=$(MODEL) $(VENV)/bin/coverid serve; \
	fi

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/extractor.py

clean:
	rm -rf build .pytest_cache
