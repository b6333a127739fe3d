#!/usr/bin/env bash
# pop3sd against this machine's TCP floor for the same connection, pinned:
# the server (pop3sd, then tcp-floor) alone on one CPU, the load generator
# on another. Each round runs the pop3sd scenario closed-loop, then plays
# the same connection's bytes with tcp-floor (no TLS, no POP3) in open loop
# at the rate pop3sd served, and prints both servers' CPU per connection
# (their processes' own, from /proc). Add the in-memory TLS cost
# (`cargo bench -p pop3sd-bench --bench tls`) to the floor for the ceiling;
# what pop3sd spends above that is its own.
#
#   bench/floor.sh                                   # the handshake
#   SC=session EXTRA="--no-uidl --message 4" \
#     SCRIPT=234:770,159:220,28:35,28:96,30:51368,28:64 bench/floor.sh
#
# SCRIPT is the connection's bytes per turn (CLIENT:SERVER,...), as
# compare.sh's FLOOR_HANDSHAKE and FLOOR_SESSION_50K; ROUNDS (3),
# DURATION (s, 5), USERS (200), CONCURRENCY (32), SERVER_CPU (0),
# GEN_CPU (1).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SC=${SC:-handshake}; SCRIPT=${SCRIPT:-234:770,64:182,28:64}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; USERS=${USERS:-200}; CONCURRENCY=${CONCURRENCY:-32}
SERVER_CPU=${SERVER_CPU:-0}; GEN_CPU=${GEN_CPU:-1}
read -r -a EXTRA_ARGS <<<"${EXTRA:-}"
BIN=$ROOT/target/release
(cd "$ROOT" && cargo build --release -q -p pop3sd -p pop3-loadgen)
W=$(mktemp -d /tmp/pop3sd-floor.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
wait_json() { for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; return 1; }
taskset -c "$SERVER_CPU" "$BIN/pop3sd" demo --dir "$W/root" --cores 1 --users "$USERS" \
  --password-scheme plain --json >"$W/demo.json" 2>/dev/null &
PID=$!; PIDS+=("$PID")
taskset -c "$SERVER_CPU" "$BIN/tcp-floor" --script "$SCRIPT" --threads 1 >"$W/floor.json" &
FPID=$!; PIDS+=("$FPID")
wait_json "$W/demo.json"; wait_json "$W/floor.json"
ADDR=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["addr"])' "$W/floor.json")
for round in $(seq 1 "$ROUNDS"); do
  taskset -c "$GEN_CPU" "$BIN/pop3-loadgen" -s "$SC" "${EXTRA_ARGS[@]}" --demo-json "$W/demo.json" --threads 1 \
    -c "$CONCURRENCY" -d "$DURATION" --server-pid "$PID" --quiet --json "$W/p.json" >/dev/null 2>&1 || true
  rate=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ops_per_s"])' "$W/p.json")
  taskset -c "$GEN_CPU" "$BIN/pop3-loadgen" -s tcp-floor --floor-script "$SCRIPT" --target "$ADDR" --threads 1 \
    --rate "$rate" -d "$DURATION" --server-pid "$FPID" --quiet --json "$W/f.json" >/dev/null 2>&1 || true
  python3 - "$W/p.json" "$W/f.json" "$round" <<'PY'
import json, sys
p, f = (json.load(open(x)) for x in sys.argv[1:3])
print(f"round {sys.argv[3]}: pop3sd {p['server_cpu_us_per_op']:,.0f} µs/connection at {p['ops_per_s']:,.0f}/s "
      f"({p['error_total']} errors); tcp floor {f['server_cpu_us_per_op']:,.0f} µs at {f['ops_per_s']:,.0f}/s "
      f"({f['error_total']} errors)")
PY
done
