#!/usr/bin/env bash
# First results of `sembase eval`: all-MiniLM-L6-v2, all-mpnet-base-v2 and
# multilingual-e5-small on English STS-B test, STS12-14, SICK-R test and
# msmarco-5k; multilingual-e5-small on Chinese STS-B test, LCQMC test pairs,
# ATEC dev pairs and LCQMC retrieval. e5 gets its prefixes ("query: " for
# queries and both sides of sts/pairs, "passage: " for documents).
#
#   bench/eval_all.sh            # CPU-heavy: run it with nice, in the background
#
# Writes $OUT_DIR (default target/eval-all/): one JSON per run, all.json,
# report.html and results.md, and prints results.md (the README's results
# section). Wall times are per (model, task) and measured with the embedding
# cache off, so they are the encoder's real cost on this machine; set
# EVAL_CACHE=1 to use the cache instead. Models come from the store
# ($SEMBASE_HOME, default ~/.cache/sembase); pull them first with
# `target/release/sembase model pull NAME`. The data comes from ../shared/data
# beside the repository (DATA names another data root).
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=${SEMBASE_HOME:-$HOME/.cache/sembase}/models
for model in all-minilm-l6-v2 all-mpnet-base-v2 multilingual-e5-small; do
  [ -d "$STORE/$model" ] || { echo "$model is not in $STORE: run \`target/release/sembase model pull $model\`" >&2; exit 1; }
done

DATA="${DATA:-../shared/data}"
OUT_DIR="${OUT_DIR:-target/eval-all}"
mkdir -p "$OUT_DIR"
cache=(--no-cache)
[ "${EVAL_CACHE:-0}" = 1 ] && cache=()
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")

cargo build --release -p sembase-cli >&2
# A private copy, so that a rebuild during the (long) run cannot swap the binary.
cp target/release/sembase "$OUT_DIR/sembase"
SEMBASE="$OUT_DIR/sembase"

en=(
  --task "sts:$DATA/en/stsb/test.tsv"
  --task "sts:$DATA/en/sts12/test.tsv"
  --task "sts:$DATA/en/sts13/test.tsv"
  --task "sts:$DATA/en/sts14/test.tsv"
  --task "sts:$DATA/en/sickr/test.tsv"
  --task "retrieval:$DATA/en/retrieval/msmarco-5k"
)
zh=(
  --task "sts:$DATA/zh/stsb/test.tsv"
  --task "pairs:$DATA/zh/lcqmc/test.tsv"
  --task "pairs:$DATA/zh/atec/dev.tsv"
  --task "retrieval:$DATA/zh/retrieval/lcqmc"
)
e5=(--model multilingual-e5-small --query-prefix "query: " --doc-prefix "passage: ")

runs=()
run() {
  local name="$1"
  shift
  local start
  start=$(date +%s)
  echo "== $name" >&2
  "$SEMBASE" eval "$@" "${cache[@]}" "${threads[@]}" --json "$OUT_DIR/$name.json" >"$OUT_DIR/$name.txt"
  echo "== $name: $(($(date +%s) - start)) s" >&2
  runs+=(--from-json "$OUT_DIR/$name.json")
}

run minilm-en --model all-minilm-l6-v2 "${en[@]}"
run mpnet-en --model all-mpnet-base-v2 "${en[@]}"
run e5-en "${e5[@]}" "${en[@]}"
run e5-zh "${e5[@]}" "${zh[@]}"

"$SEMBASE" eval "${runs[@]}" --json "$OUT_DIR/all.json" --report "$OUT_DIR/report.html" --markdown "$OUT_DIR/results.md" >/dev/null
{
  echo "Measured with \`bench/eval_all.sh\` on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); metric values x100, seconds = wall time of one model on one task, cache off."
  echo
  cat "$OUT_DIR/results.md"
} >"$OUT_DIR/results.tmp" && mv "$OUT_DIR/results.tmp" "$OUT_DIR/results.md"
cat "$OUT_DIR/results.md"
echo "report: $OUT_DIR/report.html" >&2
