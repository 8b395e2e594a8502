#!/usr/bin/env bash
# The query and intake benchmarks (benches/query.rs, benches/intake.rs)
# with their anchors installed:
# Prometheus (promtool too) and VictoriaMetrics, Debian's packages.
#
#   benches/query.sh                 # 10,000 series x 24 h
#   TIERMON_QUERY_SERIES=100000 benches/query.sh
#   benches/query.sh intake          # remote_write intake, 500,000 series
#
# Builds in release mode into $HOME/.cache/tiermon/bench-target (RocksDB's
# first release build takes a while on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  # Install without starting the packages' services.
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null; $sudo chmod +x /usr/sbin/policy-rc.d; }
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR="${TIERMON_BENCH_TARGET_DIR:-$HOME/.cache/tiermon/bench-target}"
exec cargo bench --workspace --locked --bench "${1:-query}" -- --bench
