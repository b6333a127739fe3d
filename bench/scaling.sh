#!/usr/bin/env bash
# Thread-per-core scaling: pop3sd on 1, 2, 4, ... cores against pop3-loadgen,
# one scenario after another, each run bounded by DURATION seconds.
#
# The server is pinned (taskset) to cores 0..N-1 and the load generator to
# the remaining cores, so that the two do not compete; when N is the whole
# machine they share it (the row says so). Every run records the server's
# own CPU time per operation (--server-pid), which shows whether the server
# or the load generator was the limit.
#
#   CORES_LIST="1 2 4 8 16" SCENARIOS="handshake session" DURATION=8 \
#     OUT=bench/results/scaling bench/scaling.sh
#
# POP3SD and LOADGEN may name prebuilt binaries (default: target/release,
# built if missing). Writes $OUT/scaling.md and one JSON report per run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOTAL=$(nproc)
CORES_LIST=${CORES_LIST:-"1 2 4 8 16"}
SCENARIOS=${SCENARIOS:-"handshake session"}
DURATION=${DURATION:-8}
USERS=${USERS:-500}
OUT=${OUT:-$ROOT/bench/results/scaling}
POP3SD=${POP3SD:-$ROOT/target/release/pop3sd}
LOADGEN=${LOADGEN:-$ROOT/target/release/pop3-loadgen}
W=$(mktemp -d /tmp/pop3sd-scaling.XXXXXX)
mkdir -p "$OUT"

log() { echo "[scaling] $*" >&2; }
if [ ! -x "$POP3SD" ] || [ ! -x "$LOADGEN" ]; then
  log "building pop3sd and pop3-loadgen"
  (cd "$ROOT" && cargo build --release -q -p pop3sd -p pop3-loadgen)
fi
# Many connections per core: raise the descriptor limit where allowed.
ulimit -n 65536 2>/dev/null || true

PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

wait_json() { for _ in $(seq 1 600); do [ -s "$1" ] && return 0; sleep 0.2; done; log "timeout waiting for $1"; return 1; }

{
  echo "| server cores | load generator cores | scenario | ops/s | per server core | p99 latency | server CPU per op | server cores busy | errors |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$OUT/scaling.md"

for n in $CORES_LIST; do
  if [ "$n" -gt "$TOTAL" ]; then log "skipping $n cores (machine has $TOTAL)"; continue; fi
  if [ "$n" -lt "$TOTAL" ]; then
    server_cpus="0-$((n - 1))"
    gen_cpus="$n-$((TOTAL - 1))"
    gen_threads=$((TOTAL - n))
    gen_label=$gen_threads
  else
    server_cpus="0-$((TOTAL - 1))"
    gen_cpus="0-$((TOTAL - 1))"
    gen_threads=$TOTAL
    gen_label="$TOTAL (shared)"
  fi
  d="$W/$n"
  mkdir -p "$d"
  taskset -c "$server_cpus" "$POP3SD" demo --dir "$d/root" --cores "$n" --users "$USERS" \
    --messages 5 --password-scheme plain --json >"$d/demo.json" 2>"$d/server.log" &
  PID=$!
  wait_json "$d/demo.json"
  for s in $SCENARIOS; do
    conc=$((n * 48))
    [ "$conc" -lt 32 ] && conc=32
    log "server $n cores ($server_cpus), loadgen $gen_threads threads ($gen_cpus): $s, $conc in flight"
    taskset -c "$gen_cpus" "$LOADGEN" -s "$s" --demo-json "$d/demo.json" --threads "$gen_threads" \
      -c "$conc" -d "$DURATION" --server-pid "$PID" --quiet --json "$OUT/$s-$n.json" \
      >"$OUT/$s-$n.txt" 2>&1 || log "loadgen failed: $(tail -3 "$OUT/$s-$n.txt")"
    python3 - "$OUT/$s-$n.json" "$n" "$gen_label" "$s" >>"$OUT/scaling.md" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); n = int(sys.argv[2])
ops = j["ops_per_s"]; cpu = j.get("server_cpu_us_per_op") or 0
busy = ops * cpu / 1e6
print(f"| {n} | {sys.argv[3]} | {sys.argv[4]} | {ops:,.0f} | {ops / n:,.0f} | "
      f"{j['latency_us']['p99'] / 1000:.1f} ms | {cpu:,.0f} µs | {busy:.2f} of {n} | {j['error_total']} |")
PY
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
{
  echo
  echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r); $(date -u +%F)."
} >>"$OUT/scaling.md"
cat "$OUT/scaling.md"
