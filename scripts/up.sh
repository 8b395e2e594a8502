#!/usr/bin/env bash
# The main job: builds tiermon (installing what the build needs) and runs
# `tiermon up`, a whole hierarchy on this machine, monitoring it.
# Extra arguments go to `tiermon up` (see `tiermon up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiermon/target}"
scripts/install-deps.sh build
cargo build --release --locked --bin tiermon
exec "$CARGO_TARGET_DIR/release/tiermon" up "$@"
