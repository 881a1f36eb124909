# edge-asd: `make demo` runs the whole system end to end, `make test` runs every test.
# Both create .venv when missing. torch is pinned to the CPU build: an unpinned torch
# pulls a CUDA build of several GB.

PYTHON   ?= python3
TORCH    ?= torch==2.13.0
VENV     := .venv
VPY      := $(VENV)/bin/python
# The Jetson path: JetPack 6 ships Python 3.10 and no PyTorch.
PY310    ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10; do \
              $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV310  := .venv310
SYSPKGS  := libportaudio2 libsndfile1 mosquitto jackd2 systemd shellcheck chromium chromium-driver
ARTIFACTS := .cache/test-artifacts

.PHONY: demo test lint test-main test-device sysdeps venv venv310 bench clean

demo: venv
	$(VENV)/bin/edge-asd demo

test: venv lint test-main test-device

# ruff, then the layering contracts of docs/architecture.md (pyproject.toml [tool.importlinter]).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test-main: venv
	EDGE_ASD_ARTIFACTS=$(CURDIR)/$(ARTIFACTS) $(VPY) -m pytest -q -rs

# Device-side tests again, in a torch-free Python 3.10 venv, with the artifacts (bundles)
# that the main run exported: the folders of the torch-free packages (tests/core,
# tests/device, tests/engines); the other folders test torch code.
DEVICE_TESTS = tests/core tests/device tests/engines
test-device: venv310
	@if [ -z "$(PY310)" ]; then echo "python3.10 not found: device-side tests not run"; exit 1; fi
	EDGE_ASD_ARTIFACTS=$(CURDIR)/$(ARTIFACTS) EDGE_ASD_EXPECT_NO_TORCH=1 \
		$(VENV310)/bin/python -m pytest -q -rs $(DEVICE_TESTS)

venv: $(VENV)/.installed
venv310: $(VENV310)/.installed

$(VENV)/.installed: pyproject.toml | sysdeps
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[train,onnx,test]'
	touch $@

$(VENV310)/.installed: pyproject.toml | sysdeps
	test -x $(VENV310)/bin/python || $(PY310) -m venv $(VENV310)
	$(VENV310)/bin/python -m pip install -q --upgrade pip
	$(VENV310)/bin/python -m pip install -q -e '.[onnx]' pytest pytest-timeout
	@if $(VENV310)/bin/python -c 'import torch' 2>/dev/null; then echo "torch leaked into $(VENV310)"; exit 1; fi
	touch $@

# System packages the audio, MQTT and deploy tests need; installed only when running as root.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing system packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		fi; \
	else echo "not root: make sure these are installed: $(SYSPKGS)"; fi

bench: venv
	mkdir -p bench/results
	$(VPY) bench/engine_throughput.py --out bench/results/engine_cpu.json
	$(VPY) bench/train_throughput.py --clips 64 --batch-size 16 --steps 6 --passes 2 --json bench/results/train_cpu.json
	$(VPY) bench/listen_scale.py --streams 8 16 32 40 --seconds 60 --out bench/results/listen_cpu.json

clean:
	rm -rf $(VENV) $(VENV310) .cache build *.egg-info
