#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting,
# lints, unit and integration tests, and the conformance suites when
# ../shared/conformance (or $TIERMON_CONFORMANCE) is present.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so repeated runs are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiermon/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
scripts/install-deps.sh test
# moto_server, installed by install-deps.sh.
export PATH="$HOME/.cache/tiermon/venv/bin:$PATH"

echo "== fmt" >&2
cargo fmt --all -- --check
# Clippy builds every dependency again (its wrapper changes every unit's
# hash: RocksDB's C++ included, ~30 min on two cores the first time), so it
# runs on request, in a target folder of its own that later runs reuse:
# TIERMON_CLIPPY=1 scripts/test.sh.
if [ "${TIERMON_CLIPPY:-0}" = 1 ]; then
  echo "== clippy" >&2
  CARGO_TARGET_DIR="${TIERMON_CLIPPY_TARGET_DIR:-$HOME/.cache/tiermon/clippy-target}" \
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi
echo "== tests" >&2
# The tests fail, rather than skip, when a real peer is missing.
TIERMON_REQUIRE_PEERS=1 cargo test --workspace --locked

conformance="${TIERMON_CONFORMANCE:-../shared/conformance}"
if [ -d "$conformance/exposition" ]; then
  echo "== exposition conformance ($conformance)" >&2
  # `cargo test` above built the binary; building it alone would unify
  # features differently and rebuild RocksDB.
  out="$CARGO_TARGET_DIR/conformance"
  mkdir -p "$out"
  python3 "$conformance/exposition/run_exposition.py" --json "$out/exposition-results.json" \
    -- "$CARGO_TARGET_DIR/debug/tiermon" check metrics --format '{format}'
else
  echo "== exposition conformance: $conformance not found, skipped" >&2
fi
if [ -d "$conformance/promql" ]; then
  echo "== PromQL conformance ($conformance)" >&2
  # Every v2.42 case passes with --range-check; a regression fails the run.
  bin="$CARGO_TARGET_DIR/debug/tiermon"
  out="$CARGO_TARGET_DIR/conformance"
  mkdir -p "$out"
  (cd "$conformance/promql" && \
    PROMQL_SUT_START="exec '$bin' secondary --listen \"\$SUT_LISTEN_ADDR\" --data \"\$SUT_DATA_DIR\"" \
    python3 run_promql.py --range-check --json "$out/promql-results.json" | tail -12)
fi
echo "== all tests passed" >&2
