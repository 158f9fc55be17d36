#!/usr/bin/env bash
# The matching recipe on English (issue 24's check that it does not cost English): from
# all-MiniLM-L6-v2, the plain `train sts` on STS-B train (BASELINE_STEPS steps of 32)
# beside `train recipe` on the English training files (STS-B train, SICK-R train, MRPC
# train as 0/1 pairs, SNLI triplets) within BUDGET minutes. Reports Spearman on STS-B
# test and SICK-R test (never trained on) for the base, the baseline and the recipe,
# with minutes and peak RSS of each run.
#
#   bench/en_recipe.sh          # BUDGET=15 BASELINE_STEPS=300 THREADS=2
# Needs ../shared/data beside the repository; pulls all-minilm-l6-v2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/recipe_common.sh
DATA=${SEMBASE_DATA:-../shared/data}/en
MODEL=all-minilm-l6-v2
OUT=bench/out/en_recipe
THREADS=${THREADS:-2}
PREFIX=""
TASKS=(--task "sts:$DATA/stsb/test.tsv" --task "sts:$DATA/sickr/test.tsv")
NAMES=("STS-B test" "SICK-R test")
compare "$DATA/stsb/train.tsv" "${BASELINE_STEPS:-300}" "${BUDGET:-15}" \
  "sts:$DATA/stsb/train.tsv" "sts:$DATA/sickr/train.tsv" "pairs:$DATA/mrpc/train.tsv" \
  "triplets:$DATA/snli-triplets/train.tsv"
