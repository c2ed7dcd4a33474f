# Signal Studio. Every target bootstraps .venv from nothing when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup studio demo base test screenshots bench bench-evidence package clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

studio: $(STAMP)
	$(BIN)/signal-studio --demo

demo: $(STAMP)
	$(BIN)/signal-backend demo

# the shipped base model (resources/models/shapes-base): two jobs, ~9 minutes on an H200 (bench/gpu_base.sh
# runs them on a lent GPU), about 15 hours on 2 CPU cores; re-run to resume where it stopped
base: $(STAMP)
	$(BIN)/signal-backend base
	$(BIN)/signal-backend base --recipe resources/recipes/shapes_base_gpu_continue.toml

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)

package: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[package]'
	$(BIN)/python packaging/build.py --smoke

screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m studio.screenshots screenshots

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/import.py
	$(BIN)/python bench/cache_fill.py --json bench/results/cache_fill.json
	$(BIN)/python bench/ui_responsiveness.py
	$(BIN)/python bench/vae_diffusability.py

bench-evidence: $(STAMP)
	$(BIN)/python bench/evidence_allocation.py --steps 1000 --eval-every 250 --json bench/results/evidence_allocation.json
