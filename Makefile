# flatcli: `make demo` installs and runs the main job on the bundled digits data; `make test` tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the releases this project is developed against (pip's cap).
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: install test lint bench demo demo-snapshot sample-checkpoints clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -n auto -rs  # one worker per core (pytest-xdist); -rs: why a test skipped

lint: install
	$(BIN)/ruff check flatcli tests benchmarks
	$(BIN)/ruff format --check flatcli tests benchmarks  # all but pyproject's format exclude list

# Speed against the peer libraries on the same model and data (not part of `make test`).
bench: install
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/flatness_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/landscape_speed.py --point-batch 1 4
	$(BIN)/python benchmarks/gpu.py --smoke --out out/gpu-smoke

# The study on digits (docs/method.md's findings, measured): six short runs (AT, AT-AWP, AT + label
# smoothing, TRADES, AT + weight decay 5e-3, MART), every epoch attacked on test and train and its
# average- and worst-case flatness measured, a landscape of each run's last epoch, then the report.
# A seventh run, at-long (AT at the digits defaults' width 32, lr x0.1 after epoch 10, 60 epochs,
# a checkpoint and a held-out evaluation every 5), shows robust overfitting: its test robust loss
# rises after its minimum (held-out: 0.50 at epoch 15-20, 0.53-0.54 at 40). Reruns resume.
# Worst case at the paper's supplement radius xi 0.003: at 0.00075 this small CNN moves by
# about 0.01 nats, within the attack's noise.
DEMO_TRAIN := --width 8 --epochs 25 --quiet
DEMO_LONG := --epochs 60 --milestones 10 --save-every 5 --heldout-every 5 --quiet
DEMO_EVAL := --quiet --format csv
DEMO_RUNS := at awp at-ls trades at-wd mart
demo: install
	@echo "demo 1/12: train at (width 8, 25 epochs)"
	@$(BIN)/flatcli train $(DEMO_TRAIN) --out $(DEMO_OUT)/runs/at > /dev/null
	@echo "demo 2/12: train awp"
	@$(BIN)/flatcli train $(DEMO_TRAIN) --method awp --out $(DEMO_OUT)/runs/awp > /dev/null
	@echo "demo 3/12: train at-ls (label smoothing 0.2)"
	@$(BIN)/flatcli train $(DEMO_TRAIN) --label-smoothing 0.2 --out $(DEMO_OUT)/runs/at-ls \
		> /dev/null
	@echo "demo 4/12: train trades"
	@$(BIN)/flatcli train $(DEMO_TRAIN) --method trades --out $(DEMO_OUT)/runs/trades > /dev/null
	@echo "demo 5/12: train at-wd (weight decay 5e-3)"
	@$(BIN)/flatcli train $(DEMO_TRAIN) --weight-decay 5e-3 --out $(DEMO_OUT)/runs/at-wd \
		> /dev/null
	@echo "demo 6/12: train mart"
	@$(BIN)/flatcli train $(DEMO_TRAIN) --method mart --out $(DEMO_OUT)/runs/mart > /dev/null
	@echo "demo 7/12: train at-long (width 32, 60 epochs: robust overfitting)"
	@$(BIN)/flatcli train $(DEMO_LONG) --out $(DEMO_OUT)/runs/at-long > /dev/null
	@echo "demo 8/12: attack every checkpoint, test split"
	@$(BIN)/flatcli attack $(DEMO_OUT)/runs --out $(DEMO_OUT) --attacks pgd10x2 $(DEMO_EVAL) \
		> /dev/null
	@echo "demo 9/12: attack every checkpoint, train split"
	@$(BIN)/flatcli attack $(DEMO_OUT)/runs --out $(DEMO_OUT) --attacks pgd10x2 --split train \
		--n-examples 400 $(DEMO_EVAL) > /dev/null
	@echo "demo 10/12: average- and worst-case flatness"
	@$(BIN)/flatcli flatness $(DEMO_OUT)/runs --out $(DEMO_OUT) --measure average --samples 5 \
		--attack pgd10 --n-examples 200 $(DEMO_EVAL) > /dev/null
	@$(BIN)/flatcli flatness $(DEMO_OUT)/runs --out $(DEMO_OUT) --measure worst --xi 0.003 \
		--attack pgd10 --iterations 10 --restarts 1 --n-examples 100 $(DEMO_EVAL) > /dev/null
	@echo "demo 11/12: landscapes of the last epochs"
	@$(BIN)/flatcli landscape $(foreach r,$(DEMO_RUNS),$(DEMO_OUT)/runs/$(r)/epoch_0025.safetensors) \
		$(DEMO_OUT)/runs/at-long/epoch_0060.safetensors --out $(DEMO_OUT) \
		--n-directions 3 --steps 11 --attack pgd10 $(DEMO_EVAL) > /dev/null
	@echo "demo 12/12: report"
	@$(BIN)/flatcli report $(DEMO_OUT) --html
	@sed -n '/^## Findings/,/^## Settings/p' $(DEMO_OUT)/report.md | sed '$$d'
	@echo "report: $(DEMO_OUT)/report.md, $(DEMO_OUT)/report.html; tables: $(DEMO_OUT)/{attack,flatness,landscape,report,correlations}"

# The demo's tables and run logs, committed for the README test of the demo's quoted findings:
# run after `make demo` whenever the demo changes, then update the README's quotes.
demo-snapshot: install
	$(BIN)/python tests/data/demo_snapshot.py $(DEMO_OUT) tests/data/demo

sample-checkpoints: install
	rm -rf sample_checkpoints/at sample_checkpoints/at-ls sample_checkpoints/trades
	$(BIN)/flatcli train --width 8 --epochs 25 --out sample_checkpoints/at --quiet
	$(BIN)/flatcli train --width 8 --epochs 25 --label-smoothing 0.2 --out sample_checkpoints/at-ls --quiet
	$(BIN)/flatcli train --width 8 --epochs 25 --method trades --out sample_checkpoints/trades --quiet
	rm -f sample_checkpoints/*/trainer_state.pt

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
