#!/usr/bin/env bash
# pop3sd and Dovecot side by side, in one run, on this machine.
#
# Both servers get identical tenants (example.com, example.org), users and
# passwords (the same passwd-files), ECDSA P-256 certificates (picked by SNI)
# and mail (pop3sd's demo writes the same messages as Maildirs for Dovecot).
# Dovecot is tuned as its documentation advises for performance:
# high-performance login processes (service_count = 0, process_min_avail =
# one per core), reused pop3 processes, an auth cache. The same pop3-loadgen
# scenarios run against each; server CPU is all CPU used on the machine minus
# the load generator's own (fair to Dovecot's many processes), so run this on
# an otherwise idle machine. Both servers are up together (the one not being
# measured is idle) and take turns, scenario by scenario.
#
# Every run offers only TLS 1.3, one cipher suite and one key exchange
# group, so that both servers are measured doing the same cryptography
# (left to themselves they differ: pop3sd prefers AES-128-GCM, Dovecot
# follows the client's order and picks AES-256-GCM).
#
# Writes $OUT/compare.md (a side-by-side table with ratios; this machine's
# hardware ceiling from criterion, measured in the same run, with each
# server's share of it; and the targets of docs/benchmarks.md checked) and
# $OUT/compare.json, plus every loadgen report and $OUT/run.json (the
# parameters). bench/compare_report.py makes the tables from those files.
#
# Usage: bench/compare.sh            (needs root for apt-get and the vmail user)
# Knobs: USERS (per tenant, 500) MESSAGES (10; under 4 leaves session-50k out) DURATION (s, 10)
#        CONCURRENCY (32) IDLE (idle connections, at most 2*USERS) OUT (bench/results/<date>)
#        ROUNDS (3): each scenario runs this many times against each server, the
#        two alternating, and the tables give medians and spreads; this
#        machine's speed drifts by 10-20 % over minutes, which one run each
#        would charge to whichever server ran at the worse moment
#        SUITE (TLS13_AES_128_GCM_SHA256, pop3sd's preference) KX (x25519): what the
#        load generator offers
#        KEEP_WORK: keep the work directory (data sets, logs) instead of removing it
#        TCP_CC: a TCP congestion control set machine-wide (sysctl) for the
#        whole run, for both servers and the load generator alike; the
#        machine's own is restored at exit. Unset, the machine's is used. It
#        matters for RETR: BBR without the fq qdisc (loopback has none) paces
#        with a timer per burst (docs/benchmarks.md, "TCP congestion control").
#        FLOOR_HANDSHAKE, FLOOR_SESSION_50K: the exchanges `tcp-floor` plays
#        for the TCP floor (below); the defaults are the bytes of pop3sd's
#        handshake and session-50k connections with the demo's certificate,
#        TLS 1.3 and X25519, in the same turns (read through a logging
#        loopback proxy, docs/benchmarks.md "TCP floor"). Other key
#        exchanges send a few bytes more.
#
# The TCP floor: after each round of handshake and session-50k, the load
# generator plays the same connection's bytes, in the same turns, with
# `tcp-floor` (no TLS, no POP3; one io_uring thread per core like pop3sd), at
# the rate pop3sd served in that round. Its server CPU is what the kernel and
# the runtime alone cost for that connection here: with the in-memory TLS
# work it makes this machine's ceiling for a whole connection.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
USERS=${USERS:-500}
MESSAGES=${MESSAGES:-10}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-3}
SUITE=${SUITE:-TLS13_AES_128_GCM_SHA256}
KX=${KX:-x25519}
case $SUITE in
  TLS13_AES_128_GCM_SHA256 | TLS13_AES_256_GCM_SHA384 | TLS13_CHACHA20_POLY1305_SHA256) ;;
  *) echo "SUITE=$SUITE: the comparison is TLS 1.3; use TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384 or TLS13_CHACHA20_POLY1305_SHA256" >&2; exit 2 ;;
esac
case $ROUNDS in
  '' | *[!0-9]* | 0) echo "ROUNDS=$ROUNDS: a positive number" >&2; exit 2 ;;
esac
case $MESSAGES in
  '' | *[!0-9]* | 0) echo "MESSAGES=$MESSAGES: a positive number" >&2; exit 2 ;;
esac
# session-50k is the targets' session (login, STAT, LIST, RETR ~50 KiB,
# QUIT): no UIDL, and RETR of each user's fourth message, which the demo
# makes 51,200 bytes. It needs four messages per user.
SCENARIOS="handshake resume session session-50k session-open retr-1mib"
[ "$MESSAGES" -lt 4 ] && SCENARIOS="handshake resume session session-open retr-1mib"
case $KX in
  x25519 | secp256r1 | secp384r1) ;;
  *) echo "KX=$KX: use x25519, secp256r1 or secp384r1" >&2; exit 2 ;;
esac
IDLE=${IDLE:-$((2 * USERS))}  # each idle connection holds its own user
FLOOR_HANDSHAKE=${FLOOR_HANDSHAKE:-234:770,64:182,28:64}
FLOOR_SESSION_50K=${FLOOR_SESSION_50K:-234:770,159:220,28:35,28:96,30:51368,28:64}
CORES=$(nproc)
OUT=${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)}
W=$(mktemp -d /tmp/pop3-compare.XXXXXX)
mkdir -p "$OUT"

log() { printf '== %s\n' "$*" >&2; }
PIDS=()
CC_FILE=/proc/sys/net/ipv4/tcp_congestion_control
MACHINE_CC=$(cat "$CC_FILE")
# The work directory holds both data sets (about 2 GB with USERS=2000): it
# goes at exit, unless KEEP_WORK is set.
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$W/dovecot/dovecot.conf" ]; then doveadm -c "$W/dovecot/dovecot.conf" stop 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [ "$(cat "$CC_FILE")" != "$MACHINE_CC" ]; then echo "$MACHINE_CC" >"$CC_FILE"; fi
  if [ -n "${KEEP_WORK:-}" ]; then log "work files kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
if [ -n "${TCP_CC:-}" ]; then
  log "TCP congestion control for this run: $TCP_CC (the machine's: $MACHINE_CC)"
  echo "$TCP_CC" >"$CC_FILE"
fi

if ! command -v dovecot >/dev/null 2>&1; then
  log "installing dovecot-pop3d"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends dovecot-pop3d >/dev/null
fi
id vmail >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin vmail

python3 - "$OUT/run.json" <<PY
import json, platform, sys, datetime
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cores": $CORES, "cpu": cpu, "kernel": platform.release(),
           "tcp_congestion_control": open("$CC_FILE").read().strip(),
           "users_per_tenant": $USERS, "messages": $MESSAGES, "duration_s": $DURATION,
           "concurrency": $CONCURRENCY, "idle_connections": $IDLE, "rounds": $ROUNDS,
           "cipher_suite": "$SUITE", "key_exchange": "$KX",
           "scenarios": "$SCENARIOS".split()}, open(sys.argv[1], "w"), indent=2)
PY

log "building pop3sd and pop3-loadgen"
(cd "$ROOT" && cargo build --release -q -p pop3sd -p pop3-loadgen)
POP3SD=$ROOT/target/release/pop3sd
LOADGEN=$ROOT/target/release/pop3-loadgen
TCP_FLOOR=$ROOT/target/release/tcp-floor

wait_json() { for _ in $(seq 1 600); do [ -s "$1" ] && return 0; sleep 0.2; done; echo "timeout waiting for $1" >&2; return 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_pop3sd NAME EXTRA-ARGS... : demo data set + Maildir copy; prints pid
start_pop3sd() {
  local name=$1; shift
  "$POP3SD" demo --dir "$W/$name/root" --maildir "$W/$name/maildir" --password-scheme plain \
    --cores "$CORES" --json "$@" >"$W/$name/pop3sd.json" 2>"$W/$name/pop3sd.log" &
  local pid=$!
  wait_json "$W/$name/pop3sd.json"
  echo "$pid"
}
# Starts pop3sd in the background and records its pid in $PID (and for cleanup).
pop3sd_up() { rm -f "$W/$1/pop3sd.json"; PID=$(start_pop3sd "$@"); PIDS+=("$PID"); }

# start_dovecot NAME PORT : same tenants, users, certificates and mail
start_dovecot() {
  local name=$1 port=$2 d="$W/dovecot"
  local r="$W/$name/root"
  mkdir -p "$d/run" "$d/state"
  chown -R vmail:vmail "$W/$name/maildir"
  chmod 755 "$W" "$W/$name"
  # Dovecot's auth process runs as user dovecot; the demo root is private.
  rm -rf "$W/$name/dovecot-passwd"
  cp -r "$r/passwd" "$W/$name/dovecot-passwd"
  chown -R root:dovecot "$W/$name/dovecot-passwd"
  chmod 750 "$W/$name/dovecot-passwd"
  chmod 640 "$W/$name/dovecot-passwd"/*
  cat >"$d/dovecot.conf" <<EOF
protocols = pop3
listen = 127.0.0.1
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = required
ssl_min_protocol = TLSv1.2
ssl_cert = <$r/tls/example.com.pem
ssl_key = <$r/tls/example.com.key
local_name example.org {
  ssl_cert = <$r/tls/example.org.pem
  ssl_key = <$r/tls/example.org.key
}
disable_plaintext_auth = yes
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $W/$name/dovecot-passwd/%d
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=$W/$name/maildir/%d/%n
}
mail_location = maildir:$W/$name/maildir/%d/%n
first_valid_uid = $(id -u vmail)
pop3_uidl_format = %08Xu%08Xv
auth_cache_size = 64M
auth_cache_ttl = 1 hours
default_process_limit = $((IDLE + 2000))
default_client_limit = $((IDLE * 2 + 4000))
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    port = $port
    ssl = yes
  }
  service_count = 0
  process_min_avail = $CORES
  vsz_limit = 1G
}
service pop3 {
  service_count = 0
  process_min_avail = $CORES
  # One pop3 process per logged-in client; Dovecot's own default for this
  # service is 1,024 (default_process_limit does not apply to it), which
  # refused most of the idle run's connections before run 8.
  process_limit = $((IDLE + 100))
}
service auth {
  client_limit = $((IDLE * 2 + 4000))
}
EOF
  dovecot -c "$d/dovecot.conf"
  for _ in $(seq 1 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break; sleep 0.1; done
  # The same JSON as pop3sd's, pointing at Dovecot.
  python3 - "$W/$name/pop3sd.json" "$W/$name/dovecot.json" "$port" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); j["pop3s"] = "127.0.0.1:" + sys.argv[3]
json.dump(j, open(sys.argv[2], "w"))
PY
}

# stop_dovecot NAME : stops it and keeps a summary of its log (each kind of
# line once, with its count) as $OUT/dovecot-NAME-log.txt
stop_dovecot() {
  doveadm -c "$W/dovecot/dovecot.conf" stop 2>/dev/null || true; sleep 1
  sed -E 's/^[A-Z][a-z]{2} [ 0-9]{2} [0-9:]{8} //; s/\((client-)?pid=[^)]*\)//;
          s/(fd|pid|mpid)=[0-9]+/\1=N/g; s/user=<[^>]*>/user=<…>/; s/session=<[^>]*>/session=<…>/;
          s/^(pop3|imap)\([^)]*\)(<[0-9]+>)?(<[^>]*>)?/\1(…)/; s/(top|retr|del)=[0-9]+\/[0-9]+/\1=N\/N/g;
          s/size=[0-9]+/size=N/' \
    "$W/dovecot/dovecot.log" 2>/dev/null | sort | uniq -c | sort -rn >"$OUT/dovecot-$1-log.txt" || true
  rm -rf "$W/dovecot"
}

# run SERVER SCENARIO-NAME JSON LOADGEN-ARGS...
run() {
  local server=$1 label=$2 json=$3; shift 3
  log "$server: $label"
  "$LOADGEN" --demo-json "$json" --quiet --timeout 60 --tls-version 1.3 --cipher "$SUITE" --kx "$KX" \
    "$@" --json "$OUT/$server-$label.json" \
    2>"$OUT/$server-$label.txt" || true
}

DOVECOT_COMMS=dovecot,pop3-login,pop3,auth,anvil,log,config,stats,imap-login

# pair LABEL ROUND LOADGEN-ARGS... : one round of a scenario against both
# servers (both are up), one after the other, the order alternating with the
# round so that neither always runs on a warmer or cooler machine. Server CPU
# is counted machine-wide (all CPU but the load generator's), and also as
# the server's own processes' CPU from /proc, which leaves out kernel work
# done in other contexts; both are reported.
pair() {
  local label=$1 round=$2; shift 2
  local order=(pop3sd dovecot)
  [ $((round % 2)) = 0 ] && order=(dovecot pop3sd)
  for who in "${order[@]}"; do
    if [ "$who" = dovecot ]; then
      run dovecot "$label-$round" "$DJSON" "$@" --server-cpu-from-system --server-comm "$DOVECOT_COMMS"
    else
      run pop3sd "$label-$round" "$PJSON" "$@" --server-cpu-from-system --server-pid "$PID"
    fi
  done
}

# floor_up NAME SCRIPT : a tcp-floor server playing SCRIPT; sets FLOOR_PID
# and FLOOR_ADDR.
floor_up() {
  "$TCP_FLOOR" --script "$2" >"$W/floor-$1.json" 2>"$OUT/floor-$1-server.txt" &
  FLOOR_PID=$!; PIDS+=("$FLOOR_PID")
  wait_json "$W/floor-$1.json"
  FLOOR_ADDR=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["addr"])' "$W/floor-$1.json")
}

# floor_run LABEL ROUND PID ADDR SCRIPT : the TCP floor of a scenario's
# connection, at the rate pop3sd served it in this round.
floor_run() {
  local label=$1 round=$2 fpid=$3 addr=$4 script=$5 rate
  rate=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ops_per_s"])' \
    "$OUT/pop3sd-$label-$round.json" 2>/dev/null) || { log "tcp floor: no pop3sd $label report in round $round"; return 0; }
  log "tcp floor: $label at ${rate%.*}/s"
  "$LOADGEN" -s tcp-floor --floor-script "$script" --target "$addr" --quiet --timeout 60 --rate "$rate" \
    -d "$DURATION" --server-cpu-from-system --server-pid "$fpid" --json "$OUT/floor-$label-$round.json" \
    2>"$OUT/floor-$label-$round.txt" || true
}

log "data set A: $USERS users per tenant, $MESSAGES mixed-size messages each"
mkdir -p "$W/a"
pop3sd_up a --users "$USERS" --messages "$MESSAGES"
start_dovecot a "$(free_port)"
floor_up handshake "$FLOOR_HANDSHAKE"; FLOOR_HS_PID=$FLOOR_PID; FLOOR_HS_ADDR=$FLOOR_ADDR
floor_up session-50k "$FLOOR_SESSION_50K"; FLOOR_S50_PID=$FLOOR_PID; FLOOR_S50_ADDR=$FLOOR_ADDR
PJSON=$W/a/pop3sd.json; DJSON=$W/a/dovecot.json
for round in $(seq 1 "$ROUNDS"); do
  pair handshake "$round" -s handshake -c "$CONCURRENCY" -d "$DURATION"
  floor_run handshake "$round" "$FLOOR_HS_PID" "$FLOOR_HS_ADDR" "$FLOOR_HANDSHAKE"
  pair resume "$round" -s resume -c "$CONCURRENCY" -d "$DURATION"
  pair session "$round" -s session -c "$CONCURRENCY" -d "$DURATION"
  case " $SCENARIOS " in
    *" session-50k "*)
      pair session-50k "$round" -s session --no-uidl --message 4 -c "$CONCURRENCY" -d "$DURATION"
      floor_run session-50k "$round" "$FLOOR_S50_PID" "$FLOOR_S50_ADDR" "$FLOOR_SESSION_50K"
      ;;
  esac
done
kill "$FLOOR_HS_PID" "$FLOOR_S50_PID" 2>/dev/null || true
# Open loop at half of Dovecot's peak session rate (its median over the
# rounds), against both.
RATE=$(python3 - "$OUT" <<'PY'
import json, os, re, statistics, sys
# The session scenario's runs only (not session-50k's).
names = [n for n in os.listdir(sys.argv[1]) if re.fullmatch(r"dovecot-session-\d+\.json", n)]
rates = [json.load(open(os.path.join(sys.argv[1], n)))["ops_per_s"] for n in names]
print(max(1.0, statistics.median(rates) / 2) if rates else 10.0)
PY
)
for round in $(seq 1 "$ROUNDS"); do
  pair session-open "$round" -s session --rate "$RATE" -d "$DURATION"
done
run dovecot idle "$DJSON" -s idle --connections "$IDLE" --hold 5 --server-comm "$DOVECOT_COMMS"
stop_dovecot a
kill "$PID"; sleep 1
# A fresh `pop3sd serve` for the memory figure: no allocator history from
# the demo's mail generation or from earlier runs.
"$POP3SD" serve --config "$W/a/root/pop3sd.toml" 2>"$W/a/serve.log" &
PID=$!; PIDS+=("$PID")
for _ in $(seq 1 100); do grep -q serving "$W/a/serve.log" 2>/dev/null && break; sleep 0.1; done
run pop3sd idle "$PJSON" -s idle --connections "$IDLE" --hold 5 --server-pid "$PID"
kill "$PID"; sleep 1

log "data set B: 1 MiB messages"
mkdir -p "$W/b"
pop3sd_up b --users 16 --messages 4 --message-size 1048576
start_dovecot b "$(free_port)"
PJSON=$W/b/pop3sd.json; DJSON=$W/b/dovecot.json
for round in $(seq 1 "$ROUNDS"); do
  pair retr-1mib "$round" -s retr -c 8 -d "$DURATION"
done
stop_dovecot b
kill "$PID"; sleep 1

log "hardware ceiling: criterion (rustls/ring in memory)"
(cd "$ROOT" && cargo bench -q -p pop3sd-bench --bench tls -- --warm-up-time 1 --measurement-time 3 2>/dev/null) >"$OUT/ceiling.txt" || true

python3 "$ROOT/bench/compare_report.py" "$OUT"
log "results in $OUT"
