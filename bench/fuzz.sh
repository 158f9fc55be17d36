#!/usr/bin/env bash
# The longer fuzz run (issue 22): every fuzz target of the workspace for SECONDS
# each (default 60), one after another, then a table of executions, executions per
# second and crashes per target. `cargo test` runs the same targets for 3 s each
# (SEMBASE_FUZZ_SECONDS); see crates/sembase-fuzz for how inputs are made.
#
#   bench/fuzz.sh [SECONDS]
# A crash stops its target (bolero shrinks it and prints BOLERO_RANDOM_SEED=... to
# replay it); the failing input is saved under target/fuzz-crashes/<target>/, to be
# fixed and then committed to the target's corpus (crates/*/tests/fuzz_corpus/) as a
# regression. Logs go to bench/out/fuzz/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
out=bench/out/fuzz
mkdir -p "$out"

# target, then the cargo arguments selecting its test binary, then the test's name.
targets=(
  "safetensors|-p sembase-core --test fuzz|safetensors_files"
  "gguf-mapped|-p sembase-core --test fuzz|gguf_files"
  "gguf|-p sembase-embed --test fuzz|gguf_headers"
  "e5s1|-p sembase-hub --lib|tests::fuzz::e5s1_images"
  "index|-p sembase-index --test fuzz|index_files"
  "datasets|-p sembase-train --test fuzz|dataset_files"
  "http|-p sembase-server --test fuzz|http_request_bodies"
)

for t in "${targets[@]}"; do
  IFS='|' read -r _ args _ <<<"$t"
  # shellcheck disable=SC2086
  cargo test --release $args --no-run --quiet
done

rows=()
for t in "${targets[@]}"; do
  IFS='|' read -r name args test <<<"$t"
  log="$out/$name.log"
  echo "== $name (${seconds} s)" >&2
  # shellcheck disable=SC2086
  if SEMBASE_FUZZ_SECONDS="$seconds" cargo test --release $args --quiet -- --exact "$test" --nocapture >"$log" 2>&1; then
    line=$(grep -E "^fuzz $name: " "$log" | tail -1)
    execs=$(sed -E 's/.*: ([0-9]+) executions.*/\1/' <<<"$line")
    rate=$(sed -E 's/.*\(([0-9]+)\/s\).*/\1/' <<<"$line")
    crashes=0
  else
    execs="-"
    rate="-"
    crashes=1
    grep -E "fuzz: |BOLERO_RANDOM_SEED|panicked" "$log" | head -5 >&2 || true
  fi
  rows+=("$(printf '%-12s %12s %12s %8s' "$name" "$execs" "$rate" "$crashes")")
done

printf '%-12s %12s %12s %8s\n' target executions 'exec/s' crashes
printf '%s\n' "${rows[@]}"
