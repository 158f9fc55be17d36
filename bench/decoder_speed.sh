#!/usr/bin/env bash
# SmolLM2-135M embedding throughput and peak memory (issue 9):
# sembase with the GGUF's Q4_1 blocks multiplied as they are (quantised matmuls)
# and with every matrix dequantised to f32, on STS-B test sentences, each run
# under /usr/bin/time -v for the peak RSS; beside it the peer, llama.cpp through
# llama-cpp-python's embedding mode (last-token pooling) on the same GGUF file,
# with the same thread count, and the cosine between the two engines' vectors.
# Projects memory for 0.6B/4B/8B: the measured peak minus the weights' bytes is
# the fixed part; the weights' bytes per parameter scale with the model. With the
# peer at hand it also requantises the file to Q8_0, Q4_0 and Q4_K_M (llama.cpp's
# quantiser) and measures sembase on each.
#
#   make bench-env                         # once: .venv-bench with bench/requirements.txt
#   bench/decoder_speed.sh [SENTENCES]     # default 100
# Needs `target/release/sembase model pull smollm2-135m` (the store is $SEMBASE_HOME,
# default ~/.cache/sembase), the STS-B sentences under ../shared/data beside the
# repository (SEMBASE_DATA names another data root) and GNU time at /usr/bin/time.
# PYTHON (default .venv-bench/bin/python) runs the report. Writes bench/out/decoder_speed.json.
# The peer has no binary wheel on PyPI: the first run builds llama-cpp-python
# (pinned) from source into .venv-llama-cpp, about 6 minutes on 2 cores
# (SKIP_PEER=1 leaves it out; PEER_PYTHON points at another interpreter that has it).
# Q4_1 matmuls run through sembase's own kernel (models/q4_1.rs: activations quantised
# to 8 bits per block of 32, integer dot products in AVX2), not candle's scalar one;
# from 128 token rows on, each matrix is dequantised for its call and runs the f32 GEMM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."   # the repository root: every path below is relative to it
N=${1:-100}
PYTHON=${PYTHON:-.venv-bench/bin/python}
"$PYTHON" -c "import numpy" 2>/dev/null || { echo "$PYTHON with numpy not found: run \`make bench-env\` (or set PYTHON)" >&2; exit 1; }
DIR=${SEMBASE_HOME:-$HOME/.cache/sembase}/models/smollm2-135m
GGUF=$DIR/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$GGUF" ] || { echo "no $GGUF: run \`target/release/sembase model pull smollm2-135m\`" >&2; exit 1; }
DATA=${SEMBASE_DATA:-../shared/data}/en/stsb/test.tsv
OUT=bench/out
mkdir -p "$OUT"
cargo build --release -p sembase-core --example decoder_bench -p sembase-cli >&2
BIN=target/release/examples/decoder_bench

PEER_PYTHON=${PEER_PYTHON:-.venv-llama-cpp/bin/python}
if [ -z "${SKIP_PEER:-}" ] && ! "$PEER_PYTHON" -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python 0.3.36 from source into .venv-llama-cpp (about 6 minutes)" >&2
  python3 -m venv .venv-llama-cpp
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv-llama-cpp/bin/pip install -q llama-cpp-python==0.3.36 numpy==2.4.6 >&2
  PEER_PYTHON=.venv-llama-cpp/bin/python
fi

run() { # model-dir mode-flag -> "json<TAB>peak_kib"
  local log; log=$(mktemp)
  /usr/bin/time -v "$BIN" "$1" $2 --sentences "$N" --data "$DATA" >"$log.out" 2>"$log"
  printf '%s\t%s\n' "$(cat "$log.out")" "$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")"
  rm -f "$log" "$log.out"
}
Q=$(run "$DIR" "")
F=$(run "$DIR" "--dequantize")

PEER=null
if [ -z "${SKIP_PEER:-}" ]; then
  # The same sentences decoder_bench embeds, one per line, for both engines' vectors.
  "$PYTHON" - "$DATA" "$N" "$OUT/sentences.txt" <<'PY'
import sys
texts = []
for line in open(sys.argv[1], encoding="utf-8").read().splitlines()[1:]:
    texts.extend(line.split("\t")[:2])
open(sys.argv[3], "w", encoding="utf-8").write("\n".join(texts[:int(sys.argv[2])]) + "\n")
PY
  PEER=$("$PEER_PYTHON" - "$GGUF" "$OUT/sentences.txt" "$OUT/peer_vectors.npy" <<'PY'
import json, os, resource, sys, time
import llama_cpp
import numpy as np
gguf, sentences, vectors = sys.argv[1], sys.argv[2], sys.argv[3]
texts = open(sentences, encoding="utf-8").read().splitlines()
threads = os.cpu_count()
m = llama_cpp.Llama(model_path=gguf, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                    n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
tokens = sum(len(m.tokenize(t.encode(), add_bos=False)) for t in texts)
t0 = time.time(); out = m.embed(texts, normalize=True); s = time.time() - t0
np.save(vectors, np.asarray(out, dtype=np.float32))
print(json.dumps({"mode": "llama-cpp-python q4_1", "tokens": tokens, "seconds": round(s, 2), "tokens_per_s": round(tokens / s, 1),
                  "threads": threads, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
PY
)
  # sembase's vectors for the same sentences (Q4_1 matmuls), to compare with the peer's.
  target/release/sembase embed --model smollm2-135m --input "$OUT/sentences.txt" --output "$OUT/sembase_vectors.npy" >&2

  # The other block types: the pulled file requantised by llama.cpp, each a model
  # directory of its own beside the pulled one's files. (At this width Q4_K_M is
  # mostly Q5_0: llama.cpp falls back where a row is not whole 256-blocks.)
  for type in Q8_0 Q4_0 Q4_K_M; do
    dir=$OUT/requantised/$type
    mkdir -p "$dir"
    for f in config.json tokenizer.json modules.json sentence_bert_config.json 1_Pooling 2_Normalize; do
      ln -sfn "$(cd "$DIR" && pwd)/$f" "$dir/$f"
    done
    [ -f "$dir/model.gguf" ] || "$PEER_PYTHON" - "$GGUF" "$dir/model.gguf" "$type" >&2 <<'PY'
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
PY
    run "$dir" "" >"$dir/result.tsv"
  done
fi

"$PYTHON" - "$Q" "$F" "$PEER" "$GGUF" "$OUT" <<'PY'
import json, os, sys
import numpy as np
def parse(s):
    j, kib = s.split("\t")
    d = json.loads(j); d["peak_rss_mib"] = round(int(kib) / 1024, 1); return d
q, f = parse(sys.argv[1]), parse(sys.argv[2])
peer = json.loads(sys.argv[3])
gguf, out_dir = sys.argv[4], sys.argv[5]
# SmolLM2-135M: parameters (tied embeddings counted once), and its word table
# (49152 x 576), which the GGUF stores in Q8_0 and sembase reads in place in both modes.
params, table_params, table_bytes = 134_515_008, 49152 * 576, 49152 * 576 // 32 * 34
file_bytes = os.path.getsize(gguf)
# Bytes the weights occupy per parameter in each mode: Q4_1 keeps the whole file
# mapped; f32 holds every matrix dequantised and the table still in place.
weights = {"q4_1": file_bytes, "f32": (params - table_params) * 4 + table_bytes}
proj = {}
for label, n in (("0.6B", 0.6e9), ("4B", 4e9), ("8B", 8e9)):
    proj[label] = {}
    for mode, run in (("q4_1", q), ("f32", f)):
        fixed = run["peak_rss_mib"] * 2**20 - weights[mode]
        proj[label][mode + "_gib"] = round((fixed + n * weights[mode] / params) / 2**30, 2)
out = {"model": "smollm2-135m", "sembase_q4_1": q, "sembase_f32": f,
       "q4_1_over_f32_speed": round(q["tokens_per_s"] / f["tokens_per_s"], 2),
       "peer": peer if peer else "left out (SKIP_PEER)",
       "weight_bytes_per_param": {k: round(v / params, 3) for k, v in weights.items()},
       "fixed_mib": {"q4_1": round(q["peak_rss_mib"] - weights["q4_1"] / 2**20, 1), "f32": round(f["peak_rss_mib"] - weights["f32"] / 2**20, 1)},
       "projected_peak_memory": proj,
       "projection_note": "fixed part measured on a 576-wide model; activations grow with the width and the batch's tokens"}
if peer:
    out["sembase_q4_1_over_peer_speed"] = round(q["tokens_per_s"] / peer["tokens_per_s"], 2)
    out["sembase_q4_1_over_peer_peak_rss"] = round(q["peak_rss_mib"] / peer["peak_rss_mib"], 2)
    a, b = np.load(f"{out_dir}/sembase_vectors.npy"), np.load(f"{out_dir}/peer_vectors.npy")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    out["cosine_sembase_vs_peer"] = {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}
others = {}
for block_type in ("Q8_0", "Q4_0", "Q4_K_M"):
    path = f"{out_dir}/requantised/{block_type}/result.tsv"
    if peer and os.path.exists(path):
        others[block_type] = parse(open(path).read().strip())
if others:
    out["sembase_requantised"] = others
json.dump(out, open(f"{out_dir}/decoder_speed.json", "w"), indent=2)
print(json.dumps(out, indent=2))
PY
