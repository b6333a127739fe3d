#!/usr/bin/env bash
# Bounded soak: pop3sd under the load generator's mixed scenario at a fixed
# arrival rate (open loop) for DURATION seconds (default 600), sampling the
# server's memory every SAMPLE seconds. Outside CI: it takes ten minutes.
#
#   DURATION=600 RATE=300 OUT=bench/results/soak bench/soak.sh
#
# Writes $OUT/rss.csv (seconds, RSS KiB, peak RSS KiB, open descriptors,
# threads), $OUT/soak.json (the loadgen report: ops, errors by kind, latency
# percentiles), $OUT/soak.hlog (HDR interval log), $OUT/soak.svg (rate and
# p99 over time) and $OUT/summary.md. Exits non-zero if any operation
# failed or the server died.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-600}
RATE=${RATE:-300}
SAMPLE=${SAMPLE:-5}
MIX=${MIX:-handshake=20,resume=10,session=70}
USERS=${USERS:-200}
OUT=${OUT:-$ROOT/bench/results/soak}
POP3SD=${POP3SD:-$ROOT/target/release/pop3sd}
LOADGEN=${LOADGEN:-$ROOT/target/release/pop3-loadgen}
W=$(mktemp -d /tmp/pop3sd-soak.XXXXXX)
mkdir -p "$OUT"
log() { echo "[soak] $*" >&2; }
if [ ! -x "$POP3SD" ] || [ ! -x "$LOADGEN" ]; then
  log "building pop3sd and pop3-loadgen"
  (cd "$ROOT" && cargo build --release -q -p pop3sd -p pop3-loadgen)
fi

PID=
SAMPLER=
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

"$POP3SD" demo --dir "$W/root" --users "$USERS" --messages 10 --password-scheme plain --json \
  >"$W/demo.json" 2>"$W/server.log" &
PID=$!
for _ in $(seq 1 600); do [ -s "$W/demo.json" ] && break; sleep 0.2; done
[ -s "$W/demo.json" ] || { log "server did not start"; cat "$W/server.log" >&2; exit 1; }

# Memory, descriptors and threads of the server, every SAMPLE seconds.
(
  echo "seconds,rss_kib,peak_rss_kib,fds,threads"
  start=$(date +%s)
  while kill -0 "$PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
    thr=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
    fds=$(ls "/proc/$PID/fd" | wc -l)
    echo "$(($(date +%s) - start)),$rss,$hwm,$fds,$thr"
    sleep "$SAMPLE"
  done
) >"$OUT/rss.csv" &
SAMPLER=$!

log "mixed ($MIX) at $RATE/s for ${DURATION}s against pid $PID"
rc=0
"$LOADGEN" -s mixed --mix "$MIX" --demo-json "$W/demo.json" --rate "$RATE" -d "$DURATION" \
  --server-pid "$PID" --quiet --json "$OUT/soak.json" --hdr-log "$OUT/soak.hlog" \
  --chart "$OUT/soak.svg" >"$OUT/soak.txt" 2>&1 || rc=$?
alive=yes
kill -0 "$PID" 2>/dev/null || alive=no
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
grep -cE "ERROR|panicked" "$W/server.log" >"$W/server-errors" || true

python3 - "$OUT" "$alive" "$(cat "$W/server-errors")" "$RATE" "$DURATION" "$MIX" <<'PY' | tee "$OUT/summary.md"
import csv, json, sys
out, alive, server_errors, rate, duration, mix = sys.argv[1:7]
j = json.load(open(f"{out}/soak.json"))
rows = list(csv.DictReader(open(f"{out}/rss.csv")))
rss = [(int(r["seconds"]), int(r["rss_kib"])) for r in rows if r["rss_kib"]]
def at(t):
    return min(rss, key=lambda p: abs(p[0] - t))[1]
first_min = at(60)
end = rss[-1][1]
peak = max(r for _, r in rss)
lat = j["latency_us"]
print(f"Soak: mixed ({mix}) open loop at {rate}/s for {duration} s.\n")
print("| figure | value |")
print("|---|---|")
print(f"| operations | {j['ops']:,} ({j['ops_per_s']:,.1f}/s) |")
print(f"| errors | {j['error_total']} {json.dumps(j['errors']) if j['error_total'] else ''} |")
print(f"| latency p50 / p90 / p99 / p99.9 / max | {lat['p50']/1000:.1f} / {lat['p90']/1000:.1f} / {lat['p99']/1000:.1f} / {lat['p999']/1000:.1f} / {lat['max']/1000:.1f} ms |")
print(f"| server CPU per operation | {j.get('server_cpu_us_per_op') or 0:,.0f} µs |")
print(f"| server RSS at start / after 1 min / at end / peak | {rss[0][1]/1024:.1f} / {first_min/1024:.1f} / {end/1024:.1f} / {peak/1024:.1f} MiB |")
print(f"| RSS growth from minute 1 to the end | {(end - first_min)/1024:+.1f} MiB |")
print(f"| open descriptors at end | {rows[-1]['fds']} |")
print(f"| server alive at end, ERROR lines in its log | {alive}, {server_errors} |")
PY
[ "$rc" = 0 ] && [ "$alive" = yes ] || { log "loadgen rc=$rc, server alive=$alive"; exit 1; }
