# The two commands of the README, the Python environment of the benchmarks, the CPU
# benchmark from a fresh clone, and the ARM type check.
.PHONY: serve test bench-env bench-cpu check-arm

BENCH_VENV ?= .venv-bench
BENCH_REQUIREMENTS ?= bench/requirements.txt
PYTHON3 ?= python3

## Build, pull the default model (all-minilm-l6-v2) and serve it on port 8080.
serve:
	scripts/serve.sh

## Build, pull the test models and run every test.
test:
	scripts/test.sh

## Create .venv-bench (Python 3.11+) with the packages of bench/ and tools/ (bench/requirements.txt);
## a no-op until that file changes. Then: .venv-bench/bin/python bench/SCRIPT.py ...
bench-env: $(BENCH_VENV)/.requirements.txt

$(BENCH_VENV)/.requirements.txt: $(BENCH_REQUIREMENTS)
	@$(PYTHON3) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "bench-env: $(PYTHON3) is older than Python 3.11 (set PYTHON3=python3.11 or newer)" >&2; exit 1; }
	test -x $(BENCH_VENV)/bin/python || $(PYTHON3) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check -r $(BENCH_REQUIREMENTS)
	cp $(BENCH_REQUIREMENTS) $@

## From a fresh clone: build, pull the two models, make bench-env, then run bench/cpu_speed.py with
## ARGS (e.g. ARGS=--quick); it prints the CPU, its flags and sembase's kernel line first.
bench-cpu: bench-env
	cargo build --release -p sembase-cli
	target/release/sembase model pull all-minilm-l6-v2
	target/release/sembase model pull multilingual-e5-small
	$(BENCH_VENV)/bin/python bench/cpu_speed.py $(ARGS)

ARM_TARGET ?= aarch64-unknown-linux-gnu
ARM_CC ?= clang-16
ARM_CXX ?= clang++-16
## Type-check the workspace for 64-bit ARM Linux (x86 intrinsics must stay behind
## cfg(target_arch = "x86_64")). Not part of `make test`: it needs
## `rustup target add aarch64-unknown-linux-gnu` and, for the C and C++ that the build scripts
## of ring, oniguruma and usearch's numkong compile, a cross compiler numkong accepts
## (Debian 12: apt-get install clang-16 g++-aarch64-linux-gnu; its GCC 12 and clang 14 fail).
check-arm:
	CC_$(subst -,_,$(ARM_TARGET))=$(ARM_CC) CXX_$(subst -,_,$(ARM_TARGET))=$(ARM_CXX) \
		cargo check --target $(ARM_TARGET) --workspace --all-targets
