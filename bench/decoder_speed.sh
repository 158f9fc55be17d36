#!/usr/bin/env bash
# SmolLM2-135M embedding throughput and peak memory (issue 9):
# sembase with the GGUF's Q4_1 blocks multiplied as they are (quantised matmuls)
# and with every matrix dequantised to f32, on STS-B test sentences, each run
# under /usr/bin/time -v for the peak RSS. Projects memory for 0.6B/4B/8B from
# the measured bytes per parameter. Peer: llama-cpp-python's embedding mode on
# the same GGUF, when it is importable from $PYTHON (it has no binary wheel on
# PyPI; building llama.cpp from source is left out here).
#
#   SEMBASE_HOME=/work/sembase-home bench/decoder_speed.sh [SENTENCES]   (default 100)
# Needs `sembase model pull smollm2-135m`. Writes bench/out/decoder_speed.json.
# Q4_1 matmuls run through sembase's own kernel (models/q4_1.rs: activations quantised
# to 8 bits per block of 32, integer dot products in AVX2), not candle's scalar one.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
PYTHON=${PYTHON:-/work/refenv/bin/python}
DIR=${SEMBASE_HOME:-$HOME/.cache/sembase}/models/smollm2-135m
[ -d "$DIR" ] || { echo "no $DIR: run \`sembase model pull smollm2-135m\`" >&2; exit 1; }
DATA=${SEMBASE_DATA:-../shared/data}/en/stsb/test.tsv
mkdir -p bench/out
cargo build --release -p sembase-core --example decoder_bench >&2
BIN=target/release/examples/decoder_bench

run() { # mode-flag -> "json<TAB>peak_kib"
  local log; log=$(mktemp)
  /usr/bin/time -v "$BIN" "$DIR" $1 --sentences "$N" --data "$DATA" >"$log.out" 2>"$log"
  printf '%s\t%s\n' "$(cat "$log.out")" "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")"
  rm -f "$log" "$log.out"
}
Q=$(run "")
F=$(run "--dequantize")

PEER=null
if "$PYTHON" -c "import llama_cpp" 2>/dev/null; then
  PEER=$("$PYTHON" - "$DIR/SmolLM2-135M-Instruct.Q4_1.gguf" "$DATA" "$N" <<'PY'
import json, resource, sys, time
import llama_cpp
gguf, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = []
for line in open(data, encoding="utf-8").read().splitlines()[1:]:
    texts.extend(line.split("\t")[:2])
texts = texts[:n]
m = llama_cpp.Llama(model_path=gguf, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, verbose=False, n_ctx=512)
tokens = sum(len(m.tokenize(t.encode(), add_bos=False)) for t in texts)
t0 = time.time(); m.embed(texts); s = time.time() - t0
print(json.dumps({"mode": "llama-cpp-python q4_1", "tokens": tokens, "seconds": round(s, 2), "tokens_per_s": round(tokens / s, 1),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
PY
)
fi

"$PYTHON" - "$Q" "$F" "$PEER" <<'PY'
import json, sys
def parse(s):
    j, kib = s.split("\t")
    d = json.loads(j); d["peak_rss_mib"] = round(int(kib) / 1024, 1); return d
q, f = parse(sys.argv[1]), parse(sys.argv[2])
peer = json.loads(sys.argv[3])
params = 134_515_008  # SmolLM2-135M (tied embeddings counted once)
# All-inclusive bytes per parameter (peak RSS / parameters): runtime, activations,
# tokenizer and the f32 embedding table are charged to the parameters, so the
# projection is an upper bound that loosens less as models grow.
per_param = {"q4_1": q["peak_rss_mib"] * 2**20 / params, "f32": f["peak_rss_mib"] * 2**20 / params}
proj = {label: {mode: round(n * b / 2**30, 2) for mode, b in (("q4_1_gib", per_param["q4_1"]), ("f32_gib", per_param["f32"]))}
        for label, n in (("0.6B", 0.6e9), ("4B", 4e9), ("8B", 8e9))}
out = {"model": "smollm2-135m", "sembase_q4_1": q, "sembase_f32": f,
       "q4_1_over_f32_speed": round(q["tokens_per_s"] / f["tokens_per_s"], 2),
       "peer": peer if peer else "llama-cpp-python not importable (no binary wheel on PyPI; not built here)",
       "bytes_per_param_measured": {k: round(v, 2) for k, v in per_param.items()},
       "projected_peak_memory": proj}
if peer:
    out["sembase_q4_1_over_peer_speed"] = round(q["tokens_per_s"] / peer["tokens_per_s"], 2)
json.dump(out, open("bench/out/decoder_speed.json", "w"), indent=2)
print(json.dumps(out, indent=2))
PY
