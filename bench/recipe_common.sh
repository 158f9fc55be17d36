# Shared by bench/zh_recipe.sh and bench/en_recipe.sh (sourced, not run): the plain
# `train sts` command beside `train recipe` from one base model, scored before and after
# on test sets never trained on. The caller sets MODEL, OUT, THREADS, PREFIX (may be
# empty), TASKS (an array of --task flags) and NAMES (the column names, one per task),
# then calls `compare BASELINE_DATA BASELINE_STEPS BUDGET RECIPE_DATA...`.
set -euo pipefail

evaluate() {  # MODEL JSON
  local prefix=()
  [ -n "$PREFIX" ] && prefix=(--query-prefix "$PREFIX")
  "$BIN" eval --model "$1" "${TASKS[@]}" "${prefix[@]}" --threads "$THREADS" --json "$2" >&2
}

timed() {  # NAME COMMAND...
  local name=$1; shift
  local start=$SECONDS
  /usr/bin/time -v -o "$OUT/$name-time.txt" "$@" >&2
  echo $((SECONDS - start)) > "$OUT/$name-seconds.txt"
}

compare() {  # BASELINE_DATA BASELINE_STEPS BUDGET RECIPE_DATA...
  local baseline_data=$1 baseline_steps=$2 budget=$3; shift 3
  local prefix=() data=()
  [ -n "$PREFIX" ] && prefix=(--prefix "$PREFIX")
  for spec in "$@"; do data+=(--data "$spec"); done
  rm -rf "$OUT" "$OUT.recipe" && mkdir -p "$OUT"
  cargo build --release -p sembase-cli >&2
  BIN=target/release/sembase
  "$BIN" model pull "$MODEL" >&2
  grep -m1 "model name" /proc/cpuinfo >&2
  echo "CPU features: $(grep -o -w 'avx2\|fma\|avx512f\|avx512_vnni\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2

  evaluate "$MODEL" "$OUT/base.json"
  timed baseline "$BIN" train sts --model "$MODEL" --data "$baseline_data" "${prefix[@]}" \
    --batch-size 32 --max-steps "$baseline_steps" --threads "$THREADS" --output "$OUT/baseline"
  evaluate "$OUT/baseline" "$OUT/baseline.json"
  timed recipe "$BIN" train recipe --model "$MODEL" "${data[@]}" "${prefix[@]}" \
    --budget-minutes "$budget" --threads "$THREADS" --output "$OUT/recipe"
  evaluate "$OUT/recipe" "$OUT/recipe.json"
  report
}

report() {
  python3 - "$OUT" "${NAMES[@]}" <<'PY'
import json, re, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
def scores(name):
    results = json.loads((out / f"{name}.json").read_text())["results"]
    return [r["metrics"]["spearman"] for r in results]
def run(name):
    minutes = int((out / f"{name}-seconds.txt").read_text()) / 60
    text = (out / f"{name}-time.txt").read_text()
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    return f"{minutes:.1f} min, peak {peak:.0f} MiB"
widths = [max(10, len(n) + 2) for n in names]
print(f"{'model':<10}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths)) + "  run")
for name, note in [("base", ""), ("baseline", run("baseline")), ("recipe", run("recipe"))]:
    print(f"{name:<10}" + "".join(f"{s:>{w}.2f}" for s, w in zip(scores(name), widths)) + f"  {note}")
recipe = json.loads((out / "recipe" / "recipe.json").read_text())
for step in recipe["steps"]:
    details = {k: v for k, v in step.items() if k not in ("step", "eval", "report")}
    print(f"  recipe step: {step['step']}: {details}")
PY
}
