#!/usr/bin/env bash
# The matching recipe on Chinese (issue 24) beside the plain command it replaces, in one
# run from multilingual-e5-small:
#   baseline: `sembase train sts --data zh/atec/train.tsv --prefix "query: "`, the README's
#             command (BASELINE_STEPS steps of 32);
#   recipe:   `sembase train recipe` on the Chinese training files only (ATEC train,
#             LCQMC dev, Chinese STS-B train and its triplets) within BUDGET minutes.
# Reports Spearman on ATEC dev, LCQMC test and Chinese STS-B test (never trained on)
# for the base, the baseline and the recipe, with minutes and peak RSS of each run.
#
#   bench/zh_recipe.sh          # BUDGET=60 BASELINE_STEPS=300 THREADS=2
# Needs ../shared/data beside the repository; pulls multilingual-e5-small.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUDGET=${BUDGET:-60}
BASELINE_STEPS=${BASELINE_STEPS:-300}
THREADS=${THREADS:-2}
DATA=${SEMBASE_DATA:-../shared/data}/zh
OUT=bench/out/zh_recipe
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release -p sembase-cli >&2
BIN=target/release/sembase
MODEL=multilingual-e5-small
"$BIN" model pull "$MODEL" >&2
grep -m1 "model name" /proc/cpuinfo >&2
echo "CPU features: $(grep -o -w 'avx2\|fma\|avx512f\|avx512_vnni\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2

TASKS=(--task "sts:$DATA/atec/dev.tsv" --task "sts:$DATA/lcqmc/test.tsv" --task "sts:$DATA/stsb/test.tsv")
evaluate() {  # MODEL JSON
  "$BIN" eval --model "$1" "${TASKS[@]}" --query-prefix "query: " --threads "$THREADS" --json "$2" >&2
}
timed() {  # NAME COMMAND...
  local name=$1; shift
  local start=$SECONDS
  /usr/bin/time -v -o "$OUT/$name-time.txt" "$@" >&2
  echo $((SECONDS - start)) > "$OUT/$name-seconds.txt"
}

evaluate "$MODEL" "$OUT/base.json"
timed baseline "$BIN" train sts --model "$MODEL" --data "$DATA/atec/train.tsv" --prefix "query: " \
  --batch-size 32 --max-steps "$BASELINE_STEPS" --threads "$THREADS" --output "$OUT/baseline"
evaluate "$OUT/baseline" "$OUT/baseline.json"
timed recipe "$BIN" train recipe --model "$MODEL" --data "sts:$DATA/atec/train.tsv" \
  --data "sts:$DATA/lcqmc/dev.tsv" --data "sts:$DATA/stsb/train.tsv" \
  --data "triplets:$DATA/stsb-triplets/train.tsv" --prefix "query: " \
  --budget-minutes "$BUDGET" --threads "$THREADS" --output "$OUT/recipe"
evaluate "$OUT/recipe" "$OUT/recipe.json"

python3 - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
def scores(name):
    results = json.loads((out / f"{name}.json").read_text())["results"]
    return [r["metrics"]["spearman"] for r in results]
def run(name):
    minutes = int((out / f"{name}-seconds.txt").read_text()) / 60
    text = (out / f"{name}-time.txt").read_text()
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    return f"{minutes:.1f} min, peak {peak:.0f} MiB"
print(f"{'model':<10}{'ATEC dev':>10}{'LCQMC test':>12}{'STS-B-zh test':>15}  run")
for name, note in [("base", ""), ("baseline", run("baseline")), ("recipe", run("recipe"))]:
    atec, lcqmc, stsb = scores(name)
    print(f"{name:<10}{atec:>10.2f}{lcqmc:>12.2f}{stsb:>15.2f}  {note}")
recipe = json.loads((out / "recipe" / "recipe.json").read_text())
for step in recipe["steps"]:
    details = {k: v for k, v in step.items() if k not in ("step", "eval", "report")}
    print(f"  recipe step: {step['step']}: {details}")
EOF
