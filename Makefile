# flatcli: `make demo` installs and runs the main job on the bundled digits data; `make test` tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the releases this project is developed against (pip's cap).
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: install test lint bench demo sample-checkpoints clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check flatcli tests benchmarks

# Speed against the peer libraries on the same model and data (not part of `make test`).
bench: install
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/flatness_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/landscape_speed.py --point-batch 1 4

# The study on digits: two runs (AT, AT + label smoothing), every epoch attacked and its
# average-case flatness measured. Reruns resume and skip finished work.
demo: install
	$(BIN)/flatcli train --width 8 --epochs 25 --out $(DEMO_OUT)/runs/at --quiet
	$(BIN)/flatcli train --width 8 --epochs 25 --label-smoothing 0.2 --out $(DEMO_OUT)/runs/at-ls --quiet
	$(BIN)/flatcli attack $(DEMO_OUT)/runs --out $(DEMO_OUT) --attacks pgd20x10 --quiet
	$(BIN)/flatcli attack $(DEMO_OUT)/runs --out $(DEMO_OUT) --attacks pgd20x10 --split train --quiet
	$(BIN)/flatcli flatness $(DEMO_OUT)/runs --out $(DEMO_OUT) --measure average --samples 5 \
		--attack pgd10 --n-examples 200 --quiet
	@echo "tables in $(DEMO_OUT)/{attack,flatness}; runs in $(DEMO_OUT)/runs;" \
		"open with pandas.read_parquet('$(DEMO_OUT)/attack')"

sample-checkpoints: install
	rm -rf sample_checkpoints/at sample_checkpoints/at-ls
	$(BIN)/flatcli train --width 8 --epochs 25 --out sample_checkpoints/at --quiet
	$(BIN)/flatcli train --width 8 --epochs 25 --label-smoothing 0.2 --out sample_checkpoints/at-ls --quiet
	rm -f sample_checkpoints/*/trainer_state.pt

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
