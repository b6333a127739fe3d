#!/usr/bin/env bash
# Before/after for each performance knob (docs/tuning.md): the same demo
# data served once per setting (`pop3sd demo --set ...`), the same loadgen
# scenarios against each, in one run on one machine. The default settings
# run first and last, so drift during the run shows.
#
#   SERVER_CORES=2 DURATION=5 OUT=bench/results/knobs bench/knobs.sh
#
# The server is pinned to cores 0..SERVER_CORES-1 and the load generator to
# the others when the machine has more CPUs than that (otherwise both
# share). Writes $OUT/knobs.md (ratios against the defaults) and one JSON
# report per run. POP3SD and LOADGEN may name prebuilt binaries.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOTAL=$(nproc)
SERVER_CORES=${SERVER_CORES:-$(( TOTAL > 2 ? 2 : 1 ))}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-48}
OUT=${OUT:-$ROOT/bench/results/knobs}
POP3SD=${POP3SD:-$ROOT/target/release/pop3sd}
LOADGEN=${LOADGEN:-$ROOT/target/release/pop3-loadgen}
W=$(mktemp -d /tmp/pop3sd-knobs.XXXXXX)
mkdir -p "$OUT"
log() { echo "[knobs] $*" >&2; }
if [ ! -x "$POP3SD" ] || [ ! -x "$LOADGEN" ]; then
  log "building pop3sd and pop3-loadgen"
  (cd "$ROOT" && cargo build --release -q -p pop3sd -p pop3-loadgen)
fi

# name | --set arguments | scenarios
VARIANTS=${VARIANTS:-"defaults||handshake session retr idle
sqpoll on|runtime.sqpoll=true|handshake session retr
pinned cores|runtime.pin_cores=true|handshake session retr
ring 256 entries|runtime.ring_entries=256|handshake session retr
ring 4096 entries|runtime.ring_entries=4096|handshake session retr
accept batch 4|runtime.accept_batch=4|handshake session
one shared accept socket|runtime.reuse_port=false|handshake session
TLS record 4 KiB|tls.record_size=4096|session retr
write buffer 1 record|runtime.write_buffer_records=1|session retr
write buffer 8 records|runtime.write_buffer_records=8|session retr
read buffer 16 KiB|runtime.read_buffer_size=16384|handshake session
no buffer pool|runtime.buffer_pool_size=0|handshake session retr
buffers kept while idle|runtime.release_idle_buffers=false|session idle
no TLS 1.3 tickets|tls.tls13_tickets=0|handshake session
2 TLS 1.3 tickets|tls.tls13_tickets=2|handshake session
defaults (again)||handshake session retr idle"}

if [ "$TOTAL" -gt "$SERVER_CORES" ]; then
  server_cpus="0-$((SERVER_CORES - 1))"
  gen_cpus="$SERVER_CORES-$((TOTAL - 1))"
  gen_threads=$((TOTAL - SERVER_CORES))
else
  server_cpus="0-$((TOTAL - 1))"
  gen_cpus=$server_cpus
  gen_threads=$TOTAL
fi

PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

echo "[]" >"$OUT/runs.json"
i=0
while IFS='|' read -r name settings scenarios; do
  [ -z "$name" ] && continue
  i=$((i + 1))
  d="$W/$i"
  mkdir -p "$d"
  args=()
  for s in $settings; do args+=(--set "$s"); done
  taskset -c "$server_cpus" "$POP3SD" demo --dir "$d/root" --cores "$SERVER_CORES" --users 1000 \
    --messages 5 --password-scheme plain "${args[@]}" --json >"$d/demo.json" 2>"$d/server.log" &
  PID=$!
  for _ in $(seq 1 600); do [ -s "$d/demo.json" ] && break; sleep 0.2; done
  [ -s "$d/demo.json" ] || { log "$name: server did not start"; tail -5 "$d/server.log" >&2; exit 1; }
  for sc in $scenarios; do
    log "$name: $sc"
    extra=()
    # Idle: each connection logs in as its own user (2,000 of the 2,000);
    # give the allocator a moment to return the demo set-up's memory first.
    [ "$sc" = idle ] && { extra=(--connections 2000 --hold "$DURATION"); sleep 3; }
    report="$OUT/$i-$sc.json"
    taskset -c "$gen_cpus" "$LOADGEN" -s "$sc" --demo-json "$d/demo.json" --threads "$gen_threads" \
      -c "$CONCURRENCY" -d "$DURATION" --server-pid "$PID" --quiet --json "$report" "${extra[@]}" \
      >"$d/$sc.txt" 2>&1 || log "$name/$sc: loadgen failed: $(tail -2 "$d/$sc.txt")"
    python3 - "$OUT/runs.json" "$report" "$name" "$sc" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))
try:
    r = json.load(open(sys.argv[2]))
except Exception:
    r = None
runs.append({"variant": sys.argv[3], "scenario": sys.argv[4], "report": r})
json.dump(runs, open(sys.argv[1], "w"), indent=1)
PY
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done <<<"$VARIANTS"

python3 - "$OUT/runs.json" "$SERVER_CORES" "$gen_threads" <<'PY' | tee "$OUT/knobs.md"
import json, sys
runs = json.load(open(sys.argv[1]))
def fig(r, sc):
    if r is None:
        return None
    if sc == "idle":
        kib = (r.get("idle") or {}).get("bytes_per_connection")
        return (kib / 1024 if kib else None), None, r["error_total"]
    v = r["payload_mb_per_s"] if sc == "retr" else r["ops_per_s"]
    return v, r.get("server_cpu_us_per_op"), r["error_total"]
base = {}
for x in runs:
    if x["variant"].startswith("defaults") and x["report"]:
        f = fig(x["report"], x["scenario"])
        base.setdefault(x["scenario"], []).append(f)
unit = {"handshake": "handshakes/s", "session": "sessions/s", "retr": "RETR MB/s", "idle": "KiB per idle conn"}
print(f"Server on {sys.argv[2]} core(s), load generator on {sys.argv[3]} thread(s).\n")
print("| setting | scenario | figure | value | vs defaults | server CPU per op | vs defaults | errors |")
print("|---|---|---|---|---|---|---|---|")
for x in runs:
    sc, r = x["scenario"], x["report"]
    f = fig(r, sc)
    if f is None or f[0] is None:
        print(f"| {x['variant']} | {sc} | {unit[sc]} | failed | | | | |")
        continue
    b = [y for y in base.get(sc, []) if y and y[0]]
    bv = sum(y[0] for y in b) / len(b) if b else None
    bc = [y[1] for y in b if y[1]]
    bc = sum(bc) / len(bc) if bc else None
    ratio = f"{f[0] / bv:.2f}×" if bv else ""
    cpu = f"{f[1]:,.0f} µs" if f[1] else ""
    cratio = f"{f[1] / bc:.2f}×" if (f[1] and bc) else ""
    print(f"| {x['variant']} | {sc} | {unit[sc]} | {f[0]:,.1f} | {ratio} | {cpu} | {cratio} | {f[2]} |")
PY
