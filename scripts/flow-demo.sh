#!/usr/bin/env bash
# Starts a local 3-node cluster ($PREFIX.1-3, default 127.0.77.x), runs one Lamport acquire and probable-owner acquires until one
# is redirected, and writes their message-flow diagrams (Mermaid and SVG) with `dmutex flow`.
# Usage: scripts/flow-demo.sh [OUT_DIR]   (default: docs; needs `cargo build` first, or DMUTEX_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs}
bin=${DMUTEX_BIN:-${CARGO_TARGET_DIR:-target}/debug/dmutex}
p=${PREFIX:-127.0.77}
peers=$p.1:7070,$p.2:7070,$p.3:7070
endpoints=http://$p.1:8080,http://$p.2:8080,http://$p.3:8080
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in 0 1 2; do
  DMUTEX_LOG=warn "$bin" node --node-id $i --peers $peers --peer-addr $p.$((i+1)):7070 \
    --http-addr $p.$((i+1)):8080 & pids+=($!)
done
for i in 1 2 3; do
  until curl -sf http://$p.$i:8080/readyz >/dev/null; do sleep 0.1; done
done
lock_once() { # node(1-based) lock algorithm
  local lease
  lease=$(curl -sf -X POST "http://$p.$1:8080/v1/locks/$2/acquire" \
    -d "{\"algorithm\":\"$3\",\"timeout_ms\":5000}" | sed -n 's/.*"lease":"\([0-9a-f]*\)".*/\1/p')
  curl -sf -X POST "http://$p.$1:8080/v1/locks/$2/release" -d "{\"lease\":\"$lease\"}" >/dev/null
}
echo "\$ # one Lamport acquire + release through node 0" 
lock_once 1 db lamport
"$bin" flow --endpoints $endpoints --lock db | tee "$out/flow-lamport.mmd"
"$bin" flow --endpoints $endpoints --lock db --format svg > "$out/flow-lamport.svg"
# Probable owner: round robin over the nodes until an acquire's LOCK_ACQ is redirected by a stale hint.
for round in 1 2 3; do
  for n in 1 2 3; do
    lock_once $n jobs probable-owner
    if "$bin" flow --endpoints $endpoints --lock jobs | grep -q redirect; then
      echo "\$ # round $round, acquire through node $((n-1)) was redirected"
      "$bin" flow --endpoints $endpoints --lock jobs | tee "$out/flow-probable-owner.mmd"
      "$bin" flow --endpoints $endpoints --lock jobs --format svg > "$out/flow-probable-owner.svg"
      exit 0
    fi
  done
done
echo "no redirected acquire seen" >&2
exit 1
