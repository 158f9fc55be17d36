#!/usr/bin/env bash
# The main job on a fresh machine: build, pull the default model, serve it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${SEMBASE_MODEL:-all-minilm-l6-v2}"
cargo build --release -p sembase-cli
target/release/sembase model pull "$MODEL"
exec target/release/sembase serve --model "$MODEL" "$@"
