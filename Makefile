# flatcli: `make demo` installs and runs the main job on the bundled digits data; `make test` tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the releases this project is developed against (pip's cap).
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: install test lint bench demo clean

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

bench: install
	$(BIN)/python benchmarks/attack_speed.py

demo: install
	$(BIN)/flatcli attack sample_checkpoints --out $(DEMO_OUT) --attacks pgd20x10,aa-lite
	@echo "tables in $(DEMO_OUT)/; open with pandas.read_parquet('$(DEMO_OUT)/attack')"

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
