#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks formatting and lints, builds once, pulls the models the
# tests need into the store (a no-op when they are there), prepares the Python
# reference clients, starts a throwaway PostgreSQL + pgvector server, then runs the
# Rust and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export SEMBASE_HOME="${SEMBASE_HOME:-$HOME/.cache/sembase}"
export CARGO_TERM_COLOR=never

echo "== format and lints"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings

echo "== build"
cargo build --release --workspace --all-targets

echo "== models (store: $SEMBASE_HOME)"
for model in all-minilm-l6-v2 all-mpnet-base-v2 multilingual-e5-small smollm2-135m; do
  target/release/sembase model pull "$model"
done

echo "== chromium for the page tests (tests/python/test_page.py)"
# Debian's package; Playwright drives it (its own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

echo "== python clients (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

echo "== postgres + pgvector for the index tests (scripts/postgres.sh)"
# Its own server, stopped on exit; a developer's `scripts/postgres.sh start` is left alone.
export SEMBASE_PG_STATE="$PWD/target/postgres/test-run"
SEMBASE_TEST_PG_URL="$(scripts/postgres.sh start)"
export SEMBASE_TEST_PG_URL
trap 'scripts/postgres.sh stop' EXIT

echo "== rust tests"
cargo test --release --workspace

echo "== python tests"
.venv/bin/python -m pytest tests/python -q
