#!/usr/bin/env bash
# Renders an eval HTML report in headless Chromium and saves a PNG, to check the
# page as people will see it (layout, charts), not only its text.
#
#   bench/report_screenshot.sh [RESULTS.json ...]
#
# With result files (from `sembase eval --json`), the report is built from them;
# without, a quick eval runs first (all-minilm-l6-v2 on STS-B test and SICK-R
# test at 384 and 128 dimensions, plus msmarco-5k). Output goes to
# $OUT_DIR (default target/eval-report/): report.html and report.png.
# Needs: chromium (apt-get install -y chromium), the model in the store ($SEMBASE_HOME,
# default ~/.cache/sembase: `target/release/sembase model pull all-minilm-l6-v2`), the
# data under ../shared/data beside the repository (DATA names another data root).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-target/eval-report}"
DATA="${DATA:-../shared/data}"
WIDTH="${WIDTH:-1280}"
HEIGHT="${HEIGHT:-3200}"
mkdir -p "$OUT_DIR"

STORE=${SEMBASE_HOME:-$HOME/.cache/sembase}/models
if [ "$#" -eq 0 ] && [ ! -d "$STORE/all-minilm-l6-v2" ]; then
  echo "all-minilm-l6-v2 is not in $STORE: run \`target/release/sembase model pull all-minilm-l6-v2\`" >&2
  exit 1
fi

cargo build --release -p sembase-cli >&2
SEMBASE=target/release/sembase

from=()
if [ "$#" -gt 0 ]; then
  for f in "$@"; do from+=(--from-json "$f"); done
else
  "$SEMBASE" eval --model all-minilm-l6-v2 \
    --task "sts:$DATA/en/stsb/test.tsv" --task "sts:$DATA/en/sickr/test.tsv" \
    --task "retrieval:$DATA/en/retrieval/msmarco-5k" \
    --dimensions 384,128 --json "$OUT_DIR/quick.json" >&2
  from=(--from-json "$OUT_DIR/quick.json")
fi
"$SEMBASE" eval "${from[@]}" --report "$OUT_DIR/report.html" >/dev/null

browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
  echo "no chromium found: apt-get install -y chromium" >&2
  exit 1
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# The page must render with the network off: --disable-background-networking and
# no external resources in the page itself.
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --no-first-run --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$WIDTH,$HEIGHT" --screenshot="$(realpath "$OUT_DIR")/report.png" \
  "file://$(realpath "$OUT_DIR/report.html")" >/dev/null 2>&1
if grep -Eq '(src|href)="(https?:)?//' "$OUT_DIR/report.html"; then
  echo "the report refers to the network" >&2
  exit 1
fi
echo "$OUT_DIR/report.png"
