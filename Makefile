# Two entry points a newcomer needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= build/extractor.pt

.PHONY: install run test bench model clean

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

# The whole model cycle on a fresh machine (no cache): render, train the local model and the global
# baseline side by side (one core each), export, evaluate against the no-learning baseline.
# Every stage skips work already on disk. About 40 min rendering + TRAIN_MINUTES + 10 min on 2 cores.
TRAIN_MINUTES ?= 60
model: install
	$(PY) -m app.cli corpus --cache cache/corpus
	$(PY) -m app.cli train --run runs/lal --threads 1 --max-minutes $(TRAIN_MINUTES) > runs-lal.log 2>&1 & \
	$(PY) -m app.cli train --run runs/global --global-model --threads 1 --max-minutes $(TRAIN_MINUTES) > runs-global.log 2>&1 & \
	wait
	$(PY) -m app.cli export --checkpoint runs/lal/checkpoint.pt --output build/lal.pt --version lal-w16
	$(PY) -m app.cli export --checkpoint runs/global/checkpoint.pt --output build/global.pt --version global-w16
	$(PY) -m app.cli evaluate --model "ByteCover3 LAL (local)=build/lal.pt" \
		--model "ByteCover2-style (global)=build/global.pt" --chroma --out build/evaluation

clean:
	rm -rf build .pytest_cache
