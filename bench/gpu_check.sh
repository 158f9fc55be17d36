#!/usr/bin/env bash
# The GPU check of issue 9, for a machine with an NVIDIA GPU and the CUDA toolkit
# (CI never runs it; the CPU build needs neither).
#
#   bench/gpu_check.sh
#
# Models come from the store, $SEMBASE_HOME (default ~/.cache/sembase); the ones not
# pulled (`target/release/sembase model pull NAME`) are skipped. The STS-B sentences
# come from ../shared/data beside the repository (SEMBASE_DATA names another data root).
#
# 1. Builds the `cuda` feature.
# 2. Runs the decoder tests on the GPU (SEMBASE_DEVICE=cuda:0): the tiny LLaMA,
#    Qwen2 and Qwen3 fixtures committed in the repo against transformers, and, when
#    the models are in the store, SmolLM2 and the encoder golden tests (320 real
#    sentences each against sentence-transformers, cosine >= 0.9999).
# 3. Prints embedding throughput (sentences/s) of `sembase embed` on the STS-B test
#    sentences on the GPU and on the CPU, and their ratio, per model in the store.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "gpu_check: no GPU visible (nvidia-smi)" >&2; exit 1; }
command -v nvcc >/dev/null || { echo "gpu_check: no CUDA toolkit (nvcc) on PATH" >&2; exit 1; }
STORE=${SEMBASE_HOME:-$HOME/.cache/sembase}/models
DATA=${SEMBASE_DATA:-../shared/data}/en/stsb/test.tsv

cargo build --release --features cuda -p sembase-cli
tests=(--test decoder)
[ -d "$STORE/all-minilm-l6-v2" ] && tests+=(--test golden)
SEMBASE_DEVICE=cuda:0 cargo test --release --features cuda -p sembase-core "${tests[@]}"

texts=$(mktemp)
trap 'rm -f "$texts" "$texts.npy"' EXIT
tail -n +2 "$DATA" | cut -f1,2 | tr '\t' '\n' >"$texts"
count=$(wc -l <"$texts")
seconds() { # device model -> wall seconds of one embed run
  local start end
  start=$(date +%s.%N)
  SEMBASE_DEVICE=$1 target/release/sembase embed --model "$2" --input "$texts" --output "$texts.npy" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
printf '%-24s %12s %12s %8s\n' model "cuda sent/s" "cpu sent/s" ratio
for model in all-minilm-l6-v2 multilingual-e5-small all-mpnet-base-v2 smollm2-135m; do
  [ -d "$STORE/$model" ] || { echo "$model: not in $STORE (target/release/sembase model pull $model)"; continue; }
  seconds cuda:0 "$model" >/dev/null # warm-up: kernels load, weights page in
  gpu=$(seconds cuda:0 "$model")
  cpu=$(seconds cpu "$model")
  printf '%-24s %12.0f %12.0f %7.1fx\n' "$model" "$(echo "$count / $gpu" | bc -l)" "$(echo "$count / $cpu" | bc -l)" "$(echo "$cpu / $gpu" | bc -l)"
done
