# Two entry points a newcomer needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= build/extractor.pt

.PHONY: install run test bench model model-lal clean system-run system-test

# Debian packages first (installed when missing and run as root; otherwise the exact command to run)
system-run:
	@bash docker/system-packages.sh run

system-test:
	@bash docker/system-packages.sh test

install: $(VENV)/.installed

# pip shows what it fetches (no --quiet): the first install downloads PyTorch, a few GB
$(VENV)/.installed: pyproject.toml
	@echo "== make: creating $(VENV) and installing coverid with its test tools (5 to 15 min the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test]'
	touch $@

# The service on the embedded store (SQLite in ./data), on http://127.0.0.1:8000.
# Until trained weights ship (models/weights/extractor.pt), run exports an untrained extractor to build/.
run: system-run install
	@if [ -f models/weights/extractor.pt ]; then \
		$(VENV)/bin/coverid serve; \
	else \
		$(PY) -m app.cli export --output $(MODEL) --width 16 --if-missing && \
		COVERID_MODEL_PATH=$(MODEL) $(VENV)/bin/coverid serve; \
	fi

test: system-test install
	@echo "== make: running the tests (about 10 min on 2 cores)"
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/extractor.py

# The shipped model from a fresh machine (models/weights/MODEL_CARD.md): distil the pitch student from
# basic-pitch on the game soundtracks (Debian packages), export the local 2DFTM artifact with its PCA fitted
# on the same audio and stage 3 on, fit its match decision (is_match) on the same audio, each file its own work
# (calibration.json, beside the artifact, where the service looks for it), then evaluate it on the real covers.
# About 1.5 hours on 2 cores.
FIT_AUDIO = /usr/share/games/warzone2100/music /usr/share/games/wesnoth/1.16/data/core/music /usr/share/games/singularity/music
model: install
	@bash docker/system-packages.sh model
	mkdir -p logs build
	$(PY) -m app.cli distil $(addprefix --audio ,$(FIT_AUDIO)) --run runs/student-c32 --channels 32 --steps 6000 --threads 1 --install
	$(PY) -m app.cli export --head 2dftm --features student $(addprefix --fit-audio ,$(FIT_AUDIO)) \
		--whiten 0.25 --embedding-dim 128 --output $(MODEL)
	$(PY) -m app.cli calibrate $(addprefix --audio ,$(FIT_AUDIO)) --model $(MODEL) --threads 1
	$(PY) -m app.cli evaluate --csv ../shared/data/covers80-dev/list.csv --cache cache/covers80 \
		--model "shipped=$(MODEL)" --pitch-chroma --clips-per-length 5 --out build/eval-real

# The learnt path (ByteCover3's ResNet-IBN with LAL, trained on renders), the recipe of the model shipped before
# 2026-12-03 (models/weights/MODEL_CARD.md, ablation): render POP909 + ASAP, and invented songs into a second cache;
# stage 1 trains the local model and the global baseline side by side (one core each) on POP909,
# stage 2 fine-tunes both on POP909 + invented songs with transpositions up to a tritone;
# then export both and evaluate them against the no-learning baseline, also with transposed queries.
# Every stage skips work already on disk. About 55 min rendering + 2 x STAGE_MINUTES + 20 min on 2 cores.
STAGE_MINUTES ?= 45
STAGE = $(PY) -m app.cli train --threads 1 --steps 1200 --max-minutes $(STAGE_MINUTES)
model-lal: install
	mkdir -p logs build
	$(PY) -m app.cli corpus --cache cache/corpus --procedural 0
	$(PY) -m app.cli corpus --cache cache/procedural --splits train --pop909-works 0 --procedural 800
	$(STAGE) --run runs/lal-p20 > logs/lal-p20.log 2>&1 & \
	$(STAGE) --run runs/global-p20 --global-model > logs/global-p20.log 2>&1 & \
	wait
	$(STAGE) --run runs/lal-ft --init-from runs/lal-p20/checkpoint.pt --extra-cache cache/procedural \
		> logs/lal-ft.log 2>&1 & \
	$(STAGE) --run runs/global-ft --global-model --init-from runs/global-p20/checkpoint.pt \
		--extra-cache cache/procedural > logs/global-ft.log 2>&1 & \
	wait
	$(PY) -m app.cli export --checkpoint runs/lal-ft/checkpoint.pt --output build/lal.pt --version lal-ft-w16
	$(PY) -m app.cli export --checkpoint runs/global-ft/checkpoint.pt --output build/global.pt --version global-ft-w16
	$(PY) -m app.cli evaluate --model "ByteCover3 LAL (local)=build/lal.pt" \
		--model "ByteCover2-style (global)=build/global.pt" --chroma --out build/evaluation
	$(PY) -m app.cli evaluate --model "ByteCover3 LAL (local)=build/lal.pt" \
		--model "ByteCover2-style (global)=build/global.pt" --chroma --query-shift 3 --lengths 10 30 \
		--include build/evaluation/evaluation.json --out build/evaluation

clean:
	rm -rf build .pytest_cache
