#!/usr/bin/env bash
# A/B of two pop3sd builds on the same data, interleaved ROUNDS times:
# throughput, server CPU per operation, and TCP segments per operation
# (from /proc/net/snmp, both directions on loopback).
#
#   A=/tmp/pop3sd-before B=target/release/pop3sd SC=handshake bench/ab.sh
#
# SERVER_CPU/GEN_CPU pin the server and the load generator (default: CPU 0
# and CPU 1, one core each). USERS, MESSAGES and MESSAGE_SIZE shape the demo
# data (default 200 users, the demo's messages); for RETR of 1 MiB messages:
#   SC=retr USERS=16 MESSAGES=4 MESSAGE_SIZE=1048576 CONCURRENCY=8 bench/ab.sh
# SERVER_LOG: where the server's log goes (default /dev/null; a file makes
# logging cost what it costs in production).
# RATE: open loop at that many operations per second instead of CONCURRENCY
# in flight (the low-load regime, where wake-ups dominate).
# UNPINNED=1: neither is pinned, the server runs one core per CPU and the
# load generator one thread per CPU, and server CPU is counted machine-wide
# (as compare.sh does): what crosses cores (TLB shootdowns, wake-ups on
# another CPU) is only seen this way.
# A_SET and B_SET: space-separated `--set` values for each side, to compare
# two settings of one binary:
#   A=target/release/pop3sd B=target/release/pop3sd A_SET=runtime.tcp_congestion=bbr \
#     B_SET=runtime.tcp_congestion=cubic SC=retr ... bench/ab.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=${A:?A=path of the first pop3sd}; B=${B:?B=path of the second pop3sd}
SC=${SC:-handshake}; ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}
SERVER_CPU=${SERVER_CPU:-0}; GEN_CPU=${GEN_CPU:-1}
USERS=${USERS:-200}; CONCURRENCY=${CONCURRENCY:-32}
SHAPE=(--users "$USERS")
PIN_SERVER=(taskset -c "$SERVER_CPU"); PIN_GEN=(taskset -c "$GEN_CPU")
CORES=1; GEN_THREADS=1; CPU_FROM=()
if [ "${UNPINNED:-0}" = 1 ]; then
  PIN_SERVER=(); PIN_GEN=(); CORES=$(nproc); GEN_THREADS=0; CPU_FROM=(--server-cpu-from-system)
fi
[ -n "${MESSAGES:-}" ] && SHAPE+=(--messages "$MESSAGES")
[ -n "${MESSAGE_SIZE:-}" ] && SHAPE+=(--message-size "$MESSAGE_SIZE")
LOADGEN=${LOADGEN:-$ROOT/target/release/pop3-loadgen}
# EXTRA: more load generator arguments, e.g. the targets' session shape:
#   SC=session EXTRA="--no-uidl --message 4" bench/ab.sh
read -r -a EXTRA_ARGS <<<"${EXTRA:-}"
W=$(mktemp -d /tmp/pop3sd-ab.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$W"' EXIT
segs() { awk '/^Tcp:/ {n++; if (n == 2) print $12}' /proc/net/snmp; }
for round in $(seq 1 "$ROUNDS"); do
  # The side that runs first in a round tends to do better: alternate.
  order=(A B); [ $((round % 2)) = 0 ] && order=(B A)
  for side in "${order[@]}"; do
    bin=${!side}
    set_var=${side}_SET; sets=()
    for kv in ${!set_var:-}; do sets+=(--set "$kv"); done
    rm -rf "$W/root" "$W/demo.json"
    "${PIN_SERVER[@]}" "$bin" demo --dir "$W/root" --cores "$CORES" "${SHAPE[@]}" "${sets[@]}" \
      --password-scheme plain --json >"$W/demo.json" 2>"${SERVER_LOG:-/dev/null}" &
    PID=$!
    for _ in $(seq 1 300); do [ -s "$W/demo.json" ] && break; sleep 0.1; done
    s0=$(segs)
    load=(-c "$CONCURRENCY"); [ -n "${RATE:-}" ] && load=(--rate "$RATE")
    "${PIN_GEN[@]}" "$LOADGEN" -s "$SC" "${EXTRA_ARGS[@]}" --demo-json "$W/demo.json" --threads "$GEN_THREADS" "${load[@]}" \
      -d "$DURATION" --server-pid "$PID" "${CPU_FROM[@]}" --quiet --json "$W/r.json" >/dev/null 2>&1
    s1=$(segs)
    python3 - "$W/r.json" "$side" "$round" "$s0" "$s1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); s0, s1 = int(sys.argv[4]), int(sys.argv[5])
print(f"round {sys.argv[3]} {sys.argv[2]}: {j['ops_per_s']:,.0f} ops/s, "
      f"{j['server_cpu_us_per_op']:,.0f} µs server CPU/op, "
      f"{(s1 - s0) / max(j['ops'], 1):.2f} TCP segments/op, "
      f"{j['payload_bytes'] / max(j['duration_s'], 1e-9) / 1e6:,.0f} MB/s payload, "
      f"p50 {j['latency_us']['p50']:,} µs, {j['error_total']} errors")
PY
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  done
done
