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
source bench/recipe_common.sh
DATA=${SEMBASE_DATA:-../shared/data}/zh
MODEL=multilingual-e5-small
OUT=bench/out/zh_recipe
THREADS=${THREADS:-2}
PREFIX="query: "
TASKS=(--task "sts:$DATA/atec/dev.tsv" --task "sts:$DATA/lcqmc/test.tsv" --task "sts:$DATA/stsb/test.tsv")
NAMES=("ATEC dev" "LCQMC test" "STS-B-zh test")
compare "$DATA/atec/train.tsv" "${BASELINE_STEPS:-300}" "${BUDGET:-60}" \
  "sts:$DATA/atec/train.tsv" "sts:$DATA/lcqmc/dev.tsv" "sts:$DATA/stsb/train.tsv" \
  "triplets:$DATA/stsb-triplets/train.tsv"
