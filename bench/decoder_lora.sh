#!/usr/bin/env bash
# LoRA training of SmolLM2-135M into an embedding model (issue 28), beside its peer:
# `sembase train triplets --lora 16` and PEFT + sentence-transformers in PyTorch
# (bench/decoder_lora_peer.py) with the same recipe on the same weights, causal with
# last-token pooling and bidirectional with mean pooling (LLM2Vec's conversion).
# Each run: Spearman on STS-B test and SICK-R test before and after, the median
# seconds per step and the peak RSS (/usr/bin/time -v for sembase, ru_maxrss for the
# peer). Prints one table with the ratios.
#
#   make bench-env                       # once: .venv-bench with bench/requirements.txt (peft)
#   bench/decoder_lora.sh                # STEPS=200 BATCH=8 EVAL_PAIRS=1500 THREADS=2 SEED=42
#   SEED=7 VARIANTS=bidirectional bench/decoder_lora.sh   # another seed, one variant
# Needs `target/release/sembase model pull smollm2-135m` and ../shared/data beside the
# repository. The peer's weights are the same GGUF dequantised into Hugging Face layout
# by ../shared/tools/reference/gguf_llama_to_hf.py (made once into bench/out/smollm2-hf).
# EVAL_PAIRS cuts each test set to its first N pairs (STS-B test has 1379, SICK-R 4906):
# on 2 cores a full SICK-R pass of a 135M decoder takes about 5 minutes per model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=${STEPS:-200}
BATCH=${BATCH:-8}
EVAL_PAIRS=${EVAL_PAIRS:-1500}
THREADS=${THREADS:-2}
SEED=${SEED:-42}
VARIANTS=${VARIANTS:-causal bidirectional}
PYTHON=${PYTHON:-.venv-bench/bin/python}
"$PYTHON" -c "import peft" 2>/dev/null || { echo "$PYTHON with peft not found: run \`make bench-env\`" >&2; exit 1; }
DIR=${SEMBASE_HOME:-$HOME/.cache/sembase}/models/smollm2-135m
GGUF=$DIR/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$GGUF" ] || { echo "no $GGUF: run \`target/release/sembase model pull smollm2-135m\`" >&2; exit 1; }
DATA=${SEMBASE_DATA:-../shared/data}/en
OUT=bench/out/decoder_lora-seed$SEED
mkdir -p "$OUT"
cargo build --release -p sembase-cli >&2
BIN=target/release/sembase
HF=bench/out/smollm2-hf
[ -f "$HF/model.safetensors" ] || "$PYTHON" ../shared/tools/reference/gguf_llama_to_hf.py "$GGUF" "$HF" >&2

# The evaluation sets, cut to the same first pairs the peer's --eval-limit reads.
for set in stsb sickr; do
  head -n $((EVAL_PAIRS + 1)) "$DATA/$set/test.tsv" > "$OUT/$set-test.tsv"
done
evaluate() {  # MODEL JSON
  "$BIN" eval --model "$1" --task "sts:$OUT/stsb-test.tsv" --task "sts:$OUT/sickr-test.tsv" \
    --threads "$THREADS" --json "$2" >&2
}
RECIPE=(--lora 16 --lora-alpha 32 --lora-dropout 0.05 --batch-size "$BATCH" --lr 1e-4
        --warmup-ratio 0.1 --temperature 0.05 --max-length 64 --seed "$SEED" --threads "$THREADS")

grep -m1 "model name" /proc/cpuinfo >&2
for variant in $VARIANTS; do
  case $variant in
    causal) flags=(--pooling last); peer_flags=(--pooling last) ;;
    bidirectional) flags=(--pooling mean --bidirectional); peer_flags=(--pooling mean --bidirectional) ;;
  esac
  echo "== sembase, $variant" >&2
  # Zero steps export the untouched base (B starts at zero) with this attention and pooling.
  "$BIN" train triplets --model smollm2-135m --data "$DATA/snli-triplets/train.tsv" \
    --output "$OUT/$variant-before" --max-steps 0 "${RECIPE[@]}" "${flags[@]}" >&2
  evaluate "$OUT/$variant-before" "$OUT/sembase-$variant-before.json"
  /usr/bin/time -v -o "$OUT/sembase-$variant-time.txt" \
    "$BIN" train triplets --model smollm2-135m --data "$DATA/snli-triplets/train.tsv" \
    --output "$OUT/$variant-after" --max-steps "$STEPS" "${RECIPE[@]}" "${flags[@]}" \
    --json "$OUT/sembase-$variant-train.json" >&2
  evaluate "$OUT/$variant-after" "$OUT/sembase-$variant-after.json"
  echo "== PyTorch + PEFT, $variant" >&2
  "$PYTHON" bench/decoder_lora_peer.py --hf-model "$HF" --data "$DATA/snli-triplets/train.tsv" \
    --steps "$STEPS" --batch-size "$BATCH" --lora-rank 16 --lora-alpha 32 --lora-dropout 0.05 \
    --lr 1e-4 --warmup-ratio 0.1 --scale 20 --max-length 64 --seed "$SEED" --threads "$THREADS" \
    --eval-limit "$EVAL_PAIRS" "${peer_flags[@]}" --json "$OUT/peer-$variant.json" >&2
done

"$PYTHON" - "$OUT" "$STEPS" "$BATCH" "$EVAL_PAIRS" "$SEED" $VARIANTS <<'EOF'
import json, re, sys
from pathlib import Path
out, steps, batch, pairs, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
variants = sys.argv[6:]
def spearman(path):
    results = json.loads(Path(path).read_text())["results"]
    return {("stsb" if "stsb" in r["task"] else "sickr"): r["metrics"]["spearman"] for r in results}
def peak_mib(path):
    text = Path(path).read_text()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
print(f"SmolLM2-135M LoRA r16, {steps} steps of {batch} SNLI triplets, seed {seed}; Spearman on the first {pairs} pairs of each test set")
print(f"{'run':<32}{'STS-B before':>13}{'after':>8}{'SICK-R before':>15}{'after':>8}{'s/step':>9}{'peak MiB':>10}")
for variant in variants:
    ours_before = spearman(out / f"sembase-{variant}-before.json")
    ours_after = spearman(out / f"sembase-{variant}-after.json")
    ours_step = json.loads((out / f"sembase-{variant}-train.json").read_text())["step_seconds_median"]
    ours_peak = peak_mib(out / f"sembase-{variant}-time.txt")
    peer = json.loads((out / f"peer-{variant}.json").read_text())
    rows = [
        (f"sembase {variant}", ours_before, ours_after, ours_step, ours_peak),
        (f"PyTorch+PEFT {variant}", peer["before"], peer["after"], peer["seconds_per_step_median"], peer["peak_rss_mib"]),
    ]
    for name, before, after, step, peak in rows:
        print(f"{name:<32}{before['stsb']:>13.2f}{after['stsb']:>8.2f}{before['sickr']:>15.2f}{after['sickr']:>8.2f}{step:>9.2f}{peak:>10.0f}")
    print(f"  {variant}: sembase/PyTorch step time {ours_step / peer['seconds_per_step_median']:.2f}x, peak memory {ours_peak / peer['peak_rss_mib']:.2f}x")

# Projection from the causal run to larger bases at the same batch and length. Step time
# scales with the non-embedding parameters (the frozen matmuls: forward and input
# gradient, no weight gradient); activations with layers x (hidden + MLP width); the base
# is mapped (Q4_1: 20 bytes per 32 weights, bf16: 2 bytes) and one matrix at a time is
# expanded to f32 on top. FIXED_MIB is what serving SmolLM2-135M Q4_1 takes (README).
if "causal" not in variants:
    sys.exit(0)
FIXED_MIB = 150
smol = dict(params=134.5e6, non_embedding=106.2e6, layers=30, hidden=576, mlp=1536)
bases = {
    "Qwen3-0.6B": dict(params=596e6, non_embedding=440e6, layers=28, hidden=1024, mlp=3072),
    "Qwen3-8B": dict(params=8.19e9, non_embedding=6.95e9, layers=36, hidden=4096, mlp=12288),
}
step = json.loads((out / "sembase-causal-train.json").read_text())["step_seconds_median"]
activations = peak_mib(out / "sembase-causal-time.txt") - FIXED_MIB
width = lambda m: m["layers"] * (m["hidden"] + m["mlp"])
print(f"projection (sembase, causal, batch {batch}, from {step:.2f} s/step and {activations:.0f} MiB of activations):")
for name, m in bases.items():
    acts = activations * width(m) / width(smol)
    widest = 4 * m["hidden"] * m["mlp"] / 2**20
    seconds = step * m["non_embedding"] / smol["non_embedding"]
    for fmt, bytes_per in [("Q4_1", 20 / 32), ("bf16", 2.0)]:
        base = m["params"] * bytes_per / 2**20
        print(f"  {name} {fmt}: ~{seconds:.0f} s/step, peak ~{(base + acts + widest + FIXED_MIB) / 1024:.1f} GiB "
              f"(base {base / 1024:.1f} GiB, activations {acts / 1024:.1f} GiB)")
EOF
