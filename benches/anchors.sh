#!/usr/bin/env bash
# Bytes per sample on disk, side by side: tiermon, Prometheus and
# VictoriaMetrics (Debian's packages: 2.42 and 1.79.5), loaded with the very
# same generated node-exporter-like data (benches/storage.rs).
#
#   benches/anchors.sh [SERIES]     (default 5000 series x 24 h at 15 s)
#
# tiermon: the storage bench's figure after compaction. Prometheus:
# `promtool tsdb create-blocks-from openmetrics`, then the size of the block
# folders (chunks + index + meta). VictoriaMetrics: /api/v1/import/prometheus,
# a forced flush and merge, then the size of its data folder.
# Needs root or sudo for apt-get; uses $TIERMON_BENCH_DIR (default /tmp) for
# the data (about 0.5 GB per 1,000 series).
set -euo pipefail
cd "$(dirname "$0")/.."
series=${1:-5000}
work=$(mktemp -d "${TIERMON_BENCH_DIR:-/tmp}/tiermon-anchors.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null; $sudo chmod +x /usr/sbin/policy-rc.d; }
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== tiermon (${series} series)" >&2
# Sizes do not depend on the build profile: the test build (shared with
# scripts/test.sh) runs the harness, so no release build of RocksDB is needed.
# Its timings are not the benchmark's; only the sizes are used here.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiermon/target}"
TIERMON_BENCH_SERIES=$series TIERMON_BENCH_REOPEN_SERIES=0 TIERMON_BENCH_DIR="$work" \
  TIERMON_BENCH_EXPORT="$work/data.prom" \
  cargo test -q --workspace --bench storage -- --bench 2>/dev/null | tee "$work/tiermon.txt"
samples=$(wc -l < "$work/data.prom")
tiermon_raw=$(grep -o 'raw chunks alone[^|]*| [0-9.]*' "$work/tiermon.txt" | grep -o '[0-9.]*$')

echo "== Prometheus $(promtool --version 2>&1 | head -1 | awk '{print $3}')" >&2
# OpenMetrics wants seconds and a closing # EOF.
awk '{ printf "%s %s %.3f\n", $1, $2, $3 / 1000 } END { print "# EOF" }' "$work/data.prom" > "$work/data.om"
promtool tsdb create-blocks-from openmetrics "$work/data.om" "$work/prom" >/dev/null
rm -f "$work/data.om"
prom_bytes=$(du -sb "$work/prom" | cut -f1)
prom_chunks=$(du -cb "$work"/prom/*/chunks | tail -1 | cut -f1)

echo "== VictoriaMetrics $(victoria-metrics -version 2>&1 | head -1 || true)" >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
victoria-metrics -storageDataPath "$work/vm" -httpListenAddr "127.0.0.1:$port" \
  -retentionPeriod 100y -loggerLevel ERROR >"$work/vm.log" 2>&1 &
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
curl -fsS -X POST -T "$work/data.prom" "http://127.0.0.1:$port/api/v1/import/prometheus"
curl -fsS "http://127.0.0.1:$port/internal/force_flush"
curl -fsS "http://127.0.0.1:$port/internal/force_merge?partition_prefix=" || true
sleep 5
vm_rows=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^vm_rows\{type="(storage\/big|storage\/small)"\}/ { s += $2 } END { print s }')
vm_metric=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^vm_data_size_bytes\{type="(storage\/big|storage\/small|indexdb\/file|indexdb\/inmemory)"\}/ { s += $2 } END { print s }')
vm_bytes=$(du -sb "$work/vm/data" | cut -f1)

python3 - "$samples" "$tiermon_raw" "$prom_bytes" "$prom_chunks" "$vm_bytes" "$vm_metric" "$vm_rows" <<'EOF'
import sys
samples, tiermon, prom, prom_chunks, vm, vm_metric, vm_rows = sys.argv[1:]
samples = int(samples)
print(f"\n{samples} samples ({samples / 5760:.0f} series x 24 h at 15 s)\n")
print("| store | bytes/sample | what was measured |")
print("|---|---|---|")
print(f"| tiermon | {float(tiermon):.3f} | raw chunks after compaction (keys + values) |")
print(f"| Prometheus 2.42 | {int(prom) / samples:.3f} | block folders from promtool (chunks alone: {int(prom_chunks) / samples:.3f}) |")
print(f"| VictoriaMetrics 1.79.5 | {int(vm) / samples:.3f} | data folder after flush and merge (vm_data_size_bytes: {float(vm_metric or 0) / samples:.3f}; rows {vm_rows}) |")
EOF
