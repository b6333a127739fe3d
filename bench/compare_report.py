#!/usr/bin/env python3
"""The tables of a bench/compare.sh run, made from the files it leaves.

Kept apart from compare.sh so that the arithmetic is tested
(bench/test_compare_report.py, run by scripts/test) and so that a results
directory can be summarized again after the run:

    python3 bench/compare_report.py bench/results/<run>

Reads <run>/run.json (the parameters), the load generator's reports
(<server>-<scenario>.json) and criterion's output (ceiling.txt), and writes
<run>/compare.md and <run>/compare.json with three parts: pop3sd and
Dovecot side by side; the hardware ceiling measured in the same run, with
each server's share of it; and the targets of docs/benchmarks.md checked
against this run's figures.
"""

import json
import os
import re
import sys

SERVERS = ("pop3sd", "dovecot")
SCENARIOS = ("handshake", "resume", "session", "session-50k", "session-open", "retr-1mib")
# What runs that do not list their scenarios in run.json ran (before
# session-50k): a scenario missing from these is not counted as lost.
EARLIER_SCENARIOS = ("handshake", "resume", "session", "session-open", "retr-1mib")
# The targets' session is "login, STAT, LIST, RETR ~50 KiB, QUIT": compare.sh
# runs it as session-50k. Runs without it are checked on the session
# scenario (mixed sizes and a UIDL), and the note says so.
TARGET_SESSION = "session-50k"
MIB = 1 << 20
# The load generator's tcp-floor runs (floor-<scenario>-<round>.json): the
# bytes of a scenario's connection, exchanged in the same turns with
# neither TLS nor POP3, at the rate pop3sd served that scenario in the same
# round. Their server CPU is what the kernel and an io_uring runtime alone
# cost any server for that connection on this machine. It is the floor
# process's own CPU (from /proc), set against each server's own: for a
# server this light the machine-wide figure (all CPU but the load
# generator's) came out below its own processes' (run 22: 34-77 against
# 84-102 µs), so it does not measure it.
FLOOR_SCENARIOS = ("handshake", "session-50k")

# The machine the targets were set on (docs/benchmarks.md, "Targets"): its
# in-memory rustls/ring server handshake and its AES-256-GCM rate per core.
# Absolute targets are also shown scaled by this machine's figures, as an
# estimate of what they mean here.
REFERENCE_HANDSHAKE_US = 82.0
REFERENCE_AES256_BYTES_PER_S = 9.8e9

TIME_UNITS = {"ps": 1e-6, "ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
RATE_UNITS = {"B/s": 1, "KiB/s": 1 << 10, "MiB/s": 1 << 20, "GiB/s": 1 << 30, "TiB/s": 1 << 40}
NUM = r"([0-9.]+)\s*(ps|ns|µs|us|ms|s)"
RATE = r"([0-9.]+)\s*(B/s|KiB/s|MiB/s|GiB/s|TiB/s)"


def parse_criterion(text):
    """Benchmark name -> {"us": median estimate, "bytes_per_s": or None}.

    criterion prints the name on its own line when it is long and on the
    time's line when it is short; its "change:" lines (percentages) are not
    estimates and are skipped.
    """
    estimate = r"time:\s+\[" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\]"
    results = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+" + estimate, line) or re.match(r"^()\s+" + estimate, line)
        if m:
            name = m.group(1) or name
            if name is not None and name not in results:
                results[name] = {"us": float(m.group(4)) * TIME_UNITS[m.group(5)], "bytes_per_s": None}
            continue
        m = re.match(r"^\s+thrpt:\s+\[" + RATE + r"\s+" + RATE + r"\s+" + RATE + r"\]", line)
        if m:
            if name in results and results[name]["bytes_per_s"] is None:
                results[name]["bytes_per_s"] = float(m.group(3)) * RATE_UNITS[m.group(4)]
            continue
        m = re.match(r"^([A-Za-z0-9_]+(?:/[A-Za-z0-9_.-]+)+)\s*$", line)
        if m:
            name = m.group(1)
    return results


def load(out, name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def per_mib(report, key):
    """CPU seconds in report[key] per MiB of payload, in µs."""
    if report.get(key) is None or not report.get("payload_bytes"):
        return None
    return report[key] * 1e6 / (report["payload_bytes"] / MIB)


def fmt(v, unit=""):
    if v is None:
        return "not measured"
    text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"
    return f"{text} {unit}".rstrip()


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def field(*keys):
    """A figure read from a report by its keys (None where absent)."""
    def f(rep):
        for k in keys:
            if not isinstance(rep, dict):
                return None
            rep = rep.get(k)
        return rep
    return f


class Report:
    """Everything one compare.sh run left, and the tables made of it.

    A scenario may have been run in several rounds, alternating the two
    servers (`<server>-<scenario>-<round>.json`; runs before rounds have
    one `<server>-<scenario>.json`). Each figure is the median over the
    rounds, with its spread shown; errors and resumptions are summed.
    """

    def __init__(self, out):
        self.out = out
        self.run = load(out, "run") or {}
        self.runs = {(s, k): [] for s in SERVERS for k in SCENARIOS + ("idle",)}
        pattern = re.compile(r"^(%s)-(%s)(?:-(\d+))?\.json$" % (
            "|".join(SERVERS), "|".join(re.escape(k) for k in SCENARIOS + ("idle",))))
        found = []
        for name in os.listdir(out):
            m = pattern.match(name)
            if m:
                found.append((int(m.group(3) or 0), m.group(1), m.group(2), name))
        for _, server, scenario, name in sorted(found):
            with open(os.path.join(out, name)) as f:
                self.runs[(server, scenario)].append(json.load(f))
        self.floor = {k: [] for k in FLOOR_SCENARIOS}
        pattern = re.compile(r"^floor-(%s)(?:-(\d+))?\.json$" % "|".join(re.escape(k) for k in FLOOR_SCENARIOS))
        for name in sorted(os.listdir(out)):
            m = pattern.match(name)
            if m:
                with open(os.path.join(out, name)) as f:
                    self.floor[m.group(1)].append(json.load(f))
        self.crit = {}
        path = os.path.join(out, "ceiling.txt")
        if os.path.exists(path):
            with open(path) as f:
                self.crit = parse_criterion(f.read())

    def rounds(self):
        return max((len(v) for v in self.runs.values()), default=0)

    def expected(self):
        """The scenarios this run set out to measure."""
        listed = self.run.get("scenarios")
        return tuple(k for k in SCENARIOS if k in listed) if listed else EARLIER_SCENARIOS

    def first(self, server, scenario):
        runs = self.runs[(server, scenario)]
        return runs[0] if runs else None

    def values(self, server, scenario, f):
        return [v for v in (f(r) for r in self.runs[(server, scenario)]) if v is not None]

    def med(self, server, scenario, f):
        return median(self.values(server, scenario, f))

    def spread(self, server, scenario, f, unit):
        v = self.values(server, scenario, f)
        if len(v) < 2:
            return ""
        return f"{fmt(min(v))}–{fmt(max(v), unit)}"

    def total(self, server, scenario, key):
        return sum(r.get(key) or 0 for r in self.runs[(server, scenario)])

    # --- side by side -------------------------------------------------

    def side_by_side(self):
        many = self.rounds() > 1
        head = "| scenario | figure | pop3sd | Dovecot | ratio (pop3sd is better by) |"
        rule = "|---|---|---|---|---|"
        if many:
            head += " spread over rounds: pop3sd; Dovecot |"
            rule += "---|"
        lines, data = [head, rule], {}

        def add(scn, figure, f, higher_better, unit):
            a, b = self.med("pop3sd", scn, f), self.med("dovecot", scn, f)
            if a is None or b is None:
                return
            ratio = (a / b if b else float("inf")) if higher_better else (b / a if a else float("inf"))
            line = f"| {scn} | {figure} | {a:,.1f} {unit} | {b:,.1f} {unit} | {ratio:.2f}× |"
            entry = {"pop3sd": a, "dovecot": b, "ratio": ratio}
            if many:
                sa, sb = self.spread("pop3sd", scn, f, unit), self.spread("dovecot", scn, f, unit)
                line += f" {sa or '—'}; {sb or '—'} |"
                entry["rounds"] = {"pop3sd": self.values("pop3sd", scn, f), "dovecot": self.values("dovecot", scn, f)}
            lines.append(line)
            data.setdefault(scn, {})[figure] = entry

        def errors(scn):
            a, b = self.total("pop3sd", scn, "error_total"), self.total("dovecot", scn, "error_total")
            lines.append(f"| {scn} | errors | {a} | {b} | |" + (" |" if many else ""))
            data.setdefault(scn, {})["errors"] = {"pop3sd": a, "dovecot": b}

        for key in SCENARIOS:
            a, b = self.runs[("pop3sd", key)], self.runs[("dovecot", key)]
            if not a and not b and key not in self.expected():
                continue
            if not a or not b:
                lines.append(f"| {key} | missing | {'ok' if a else 'no report'} | {'ok' if b else 'no report'} | |"
                             + (" |" if many else ""))
                continue
            add(key, "ops/s", field("ops_per_s"), True, "")
            add(key, "p50 latency", field("latency_us", "p50"), False, "µs")
            add(key, "p99 latency", field("latency_us", "p99"), False, "µs")
            add(key, "server CPU per op", field("server_cpu_us_per_op"), False, "µs")
            add(key, "server CPU per op, its processes (/proc)", field("server_process_cpu_us_per_op"), False, "µs")
            if key == TARGET_SESSION:
                # Both servers retrieved the same message: ratio 1.00×.
                add(key, "RETR payload per session", lambda r: r["payload_bytes"] / r["ops"] if r.get("ops") else None,
                    True, "B")
            if key == "resume":
                add(key, "resumed (of handshakes)", lambda r: 100 * r["resumed_fraction"], True, "%")
                add(key, "resumed (of attempts)", lambda r: 100 * r["attempts_resumed_fraction"], True, "%")
            if key == "retr-1mib":
                add(key, "payload MB/s", field("payload_mb_per_s"), True, "")
                add(key, "server CPU per MiB", lambda r: per_mib(r, "server_cpu_s"), False, "µs")
                add(key, "server CPU per MiB, its processes (/proc)", lambda r: per_mib(r, "server_process_cpu_s"),
                    False, "µs")
            errors(key)
        if self.first("pop3sd", "idle") and self.first("dovecot", "idle"):
            add("idle", "memory per idle logged-in TLS connection",
                lambda r: r["idle"]["bytes_per_connection"] / 1024 if r.get("idle") else None, False, "KiB")
            # A server that refuses some of the connections is measured on
            # those it held; say how many, and the refusals.
            add("idle", "connections held", lambda r: r["idle"]["connections"] if r.get("idle") else None, True, "")
            errors("idle")
        tls = sorted({(r["tls_version"], r["cipher_suite"], r.get("key_exchange") or "not recorded")
                      for runs in self.runs.values() for r in runs if r.get("cipher_suite")})
        lines.append("")
        lines.append("TLS measured: " + "; ".join(" ".join(t) for t in tls) + "." if tls else "TLS measured: unknown.")
        if many:
            lines.append(f"Medians of {self.rounds()} rounds; in each round the two servers ran one after the other, "
                         "in alternating order.")
        return lines, data

    # --- hardware ceiling ---------------------------------------------

    def crit_us(self, name):
        v = self.crit.get(name)
        return v["us"] if v else None

    def kx_us(self):
        """ring's cost of the key exchange this run used."""
        kx = (self.run.get("key_exchange") or "x25519").lower()
        return self.crit_us("handshake/p256_keygen_and_agree" if kx == "secp256r1" else "handshake/x25519_keygen_and_agree")

    def handshake_us(self, suite):
        """The in-memory rustls/ring server handshake with the suite a run
        negotiated: SHA-384's key schedule costs more than SHA-256's, so a
        run is held to the figure for its own suite. The plain name is the
        handshake with pop3sd's preference, AES-128-GCM."""
        suite = suite or ""
        if "AES_256_GCM" in suite:
            return self.crit_us("handshake/server_full_tls13_ecdsa_p256_aes256")
        if "AES_128_GCM" in suite:
            return self.crit_us("handshake/server_full_tls13_ecdsa_p256")
        return None

    def aes_per_mib_us(self, suite):
        """Encryption alone of 1 MiB with the suite's AEAD, one core, in µs."""
        suite = suite or ""
        name = ("record_encrypt_16k/ring_seal_in_place/aes256gcm" if "AES_256_GCM" in suite
                else "record_encrypt_16k/ring_seal_in_place/aes128gcm" if "AES_128_GCM" in suite else None)
        v = self.crit.get(name) if name else None
        if not v or not v.get("bytes_per_s"):
            return None
        return MIB / v["bytes_per_s"] * 1e6

    def floor_us(self, scenario):
        """The median server CPU of the TCP floor for a scenario's exchange
        (None when the run made none, or one had errors)."""
        runs = self.floor.get(scenario) or []
        if not runs or any(r.get("error_total") for r in runs):
            return None
        return median([r["server_process_cpu_us_per_op"] for r in runs
                       if r.get("server_process_cpu_us_per_op") is not None])

    def with_floor_us(self, scenario, rep):
        """This machine's ceiling for a whole connection of the scenario:
        the in-memory TLS work (handshake, plus the encryption of what a
        session retrieves) and the TCP floor for its exchange."""
        floor = self.floor_us(scenario)
        hs = self.handshake_us((rep or {}).get("cipher_suite"))
        if floor is None or hs is None:
            return None
        if scenario == "handshake":
            return hs + floor
        aes = self.aes_per_mib_us((rep or {}).get("cipher_suite"))
        if aes is None or not rep.get("ops"):
            return None
        return hs + aes * rep.get("payload_bytes", 0) / rep["ops"] / MIB + floor

    def ceiling(self):
        rows, data = [], {}
        kx, sign = self.kx_us(), self.crit_us("handshake/ecdsa_p256_sign")
        crypto = kx + sign if kx is not None and sign is not None else None

        def row(figure, scenario, ceiling_for, cost_of):
            """One figure: each server's cost against the ceiling for what it
            negotiated (compare.sh offers one suite, so both agree unless a
            run was made otherwise)."""
            cells, entry, ceilings = [], {}, {}
            for s in SERVERS:
                rep = self.first(s, scenario)
                cost = self.med(s, scenario, cost_of)
                ceil = ceiling_for(rep) if rep else None
                if rep and ceil is not None:
                    ceilings[rep.get("cipher_suite") or "?"] = ceil
                if cost is None or ceil is None:
                    cells.append("not measured")
                    continue
                entry[s] = {"cpu_us": cost, "ceiling_us": ceil, "times_ceiling": cost / ceil,
                            "share_of_ceiling": ceil / cost}
                cells.append(f"{cost:,.0f} µs: {cost / ceil:.2f}× the ceiling ({100 * ceil / cost:.0f} %)")
            values = set(ceilings.values())
            if not values:
                text = "not measured"
            elif len(values) == 1:
                text = fmt(values.pop(), "µs")
            else:
                text = "; ".join(f"{k}: {fmt(v, 'µs')}" for k, v in sorted(ceilings.items()))
            rows.append(f"| {figure} | {text} | {cells[0]} | {cells[1]} |")
            data[figure] = entry

        cpu = field("server_cpu_us_per_op")

        row("full TLS 1.3 handshake: rustls + ring, in memory, same suite", "handshake",
            lambda rep: self.handshake_us(rep.get("cipher_suite")), cpu)
        row("full handshake: ring's key exchange + ECDSA P-256 signature", "handshake", lambda rep: crypto, cpu)
        row("resumed handshake: ring's key exchange", "resume", lambda rep: kx, cpu)
        row("1 MiB of RETR: the suite's encryption alone (ring, one core)", "retr-1mib",
            lambda rep: self.aes_per_mib_us(rep.get("cipher_suite")), lambda rep: per_mib(rep, "server_cpu_s"))
        own = field("server_process_cpu_us_per_op")
        if self.floor_us("handshake") is not None:
            row("full handshake: in memory (same suite) + the TCP floor of its exchange (processes' own CPU)",
                "handshake", lambda rep: self.with_floor_us("handshake", rep), own)
        if self.floor_us(TARGET_SESSION) is not None:
            row("session-50k: in-memory handshake + its RETR's encryption + the TCP floor of its exchange "
                "(processes' own CPU)", TARGET_SESSION, lambda rep: self.with_floor_us(TARGET_SESSION, rep), own)
        lines = ["| figure | ceiling (criterion, this run) | pop3sd | Dovecot |", "|---|---|---|---|"] + rows
        lines.append("")
        lines.append("Server CPU is machine-wide (all CPU but the load generator's), as a multiple of the "
                     "ceiling; the percentage is the ceiling's share of it. The rows with the TCP floor set "
                     "each server's own processes' CPU against the floor process's own.")
        floors = {k: self.floor_us(k) for k in FLOOR_SCENARIOS}
        if any(v is not None for v in floors.values()):
            lines.append("")
            lines.append("TCP floor (`tcp-floor`, no TLS, no POP3: the same bytes in the same turns, at the rate "
                         "pop3sd served; its process's own CPU): " + "; ".join(
                             f"{k} {fmt(v, 'µs')}" for k, v in floors.items() if v is not None) + ".")
            data["tcp floor"] = {k: v for k, v in floors.items() if v is not None}
        return lines, data

    # --- targets ------------------------------------------------------

    def targets(self):
        rows, data = [], []

        def check(target, measured, met, note=""):
            status = "not measured" if met is None else "met" if met else "missed"
            rows.append(f"| {target} | {measured} | **{status}** | {note} |")
            data.append({"target": target, "measured": measured, "met": met, "note": note})

        hs = self.handshake_us((self.first("pop3sd", "handshake") or {}).get("cipher_suite"))
        cpu = self.med("pop3sd", "handshake", field("server_cpu_us_per_op"))
        own = self.med("pop3sd", "handshake", field("server_process_cpu_us_per_op"))
        if cpu is not None and hs:
            note = f"its processes alone: {own / hs:.2f}×" if own is not None else ""
            floor = self.with_floor_us("handshake", self.first("pop3sd", "handshake"))
            if floor is not None:
                note += ("; " if note else "") + (
                    f"in memory + the TCP floor of its exchange: {floor:,.0f} µs, {floor / hs:.2f}× the in-memory "
                    f"handshake before any server code")
                if own is not None:
                    note += f"; pop3sd's processes {own / floor:.2f}× that"
            check("full handshake: server CPU at most 1.3× the in-memory handshake",
                  f"{cpu:,.0f} µs against {hs:,.0f} µs: {cpu / hs:.2f}×", cpu <= 1.3 * hs, note)
        else:
            check("full handshake: server CPU at most 1.3× the in-memory handshake", fmt(cpu, "µs"), None)

        session = TARGET_SESSION if self.runs[("pop3sd", TARGET_SESSION)] else "session"
        shape = ("" if session == TARGET_SESSION else
                 "measured on the session scenario (mixed sizes, with UIDL), not the target's shape; ")
        cpu = self.med("pop3sd", session, field("server_cpu_us_per_op"))
        note = shape
        # For scaling, any suite's in-memory handshake will do (an estimate).
        hs = hs or self.crit_us("handshake/server_full_tls13_ecdsa_p256")
        if cpu is not None and hs:
            scaled = 270 * hs / REFERENCE_HANDSHAKE_US
            note += (f"scaled by this machine's in-memory handshake ({hs:,.0f} against {REFERENCE_HANDSHAKE_US:.0f} µs): "
                     f"{scaled:,.0f} µs, {'met' if cpu <= scaled else 'missed'} (an estimate)")
        floor = self.with_floor_us(session, self.first("pop3sd", session)) if session == TARGET_SESSION else None
        own = self.med("pop3sd", session, field("server_process_cpu_us_per_op"))
        if own is not None and floor is not None:
            note += (f"; this machine's ceiling (in-memory handshake, RETR encryption, TCP floor): {floor:,.0f} µs, "
                     f"pop3sd's processes {own / floor:.2f}× that")
        check("session: server CPU at most 270 µs (reference machine)", fmt(cpu, "µs"),
              None if cpu is None else cpu <= 270, note)

        a, b = self.med("pop3sd", session, field("ops_per_s")), self.med("dovecot", session, field("ops_per_s"))
        check("sessions/s at least 3× Dovecot's", f"{a / b:.2f}×" if a and b else "not measured",
              a / b >= 3 if a and b else None, shape.rstrip("; "))

        cpu = self.med("pop3sd", "retr-1mib", lambda r: per_mib(r, "server_cpu_s"))
        note = ""
        aes256 = self.crit.get("record_encrypt_16k/ring_seal_in_place/aes256gcm")
        if cpu is not None and aes256 and aes256.get("bytes_per_s"):
            scaled = 600 * REFERENCE_AES256_BYTES_PER_S / aes256["bytes_per_s"]
            note = (f"scaled by this machine's AES-256-GCM rate ({aes256['bytes_per_s'] / 1e9:.1f} against "
                    f"{REFERENCE_AES256_BYTES_PER_S / 1e9:.1f} GB/s): {scaled:,.0f} µs, "
                    f"{'met' if cpu <= scaled else 'missed'} (an estimate)")
        check("RETR: server CPU per MiB at most 600 µs (reference machine)", fmt(cpu, "µs"),
              None if cpu is None else cpu <= 600, note)

        a = self.med("pop3sd", "retr-1mib", field("payload_mb_per_s"))
        b = self.med("dovecot", "retr-1mib", field("payload_mb_per_s"))
        check("RETR payload MB/s at least 3× Dovecot's", f"{a / b:.2f}×" if a and b else "not measured",
              a / b >= 3 if a and b else None)

        # Over every round: each attempt counts.
        attempts = self.total("pop3sd", "resume", "resumption_attempts")
        frac = self.total("pop3sd", "resume", "resumed") / attempts if attempts else None
        check("resumption: 100 % of attempts resumed",
              "not measured" if frac is None else f"{100 * frac:.1f} % of {attempts:,}",
              None if frac is None or not attempts else frac == 1.0)

        idle = (self.first("pop3sd", "idle") or {}).get("idle")
        check("memory per idle logged-in TLS connection at most 16 KiB",
              "not measured" if not idle else f"{idle['bytes_per_connection'] / 1024:.1f} KiB",
              None if not idle else idle["bytes_per_connection"] <= 16 * 1024,
              "" if not idle else f"{idle['connections']:,} connections held (the target names 10,000)")

        a = self.med("pop3sd", "session-open", field("latency_us", "p99"))
        b = self.med("dovecot", "session-open", field("latency_us", "p99"))
        rate = self.med("pop3sd", "session-open", field("rate"))
        # Failed sessions have no latency: a p99 beside errors flatters
        # whoever failed, so errors on either side void the comparison.
        open_errors = {srv: self.total(srv, "session-open", "error_total") for srv in ("pop3sd", "dovecot")}
        failed = {srv: n for srv, n in open_errors.items() if n}
        note = "" if not rate else f"{rate:,.0f} sessions/s"
        if failed:
            parts = ([note] if note else []) + [f"{srv}: {n} errors, p99 not comparable" for srv, n in failed.items()]
            note = "; ".join(parts)
        check("open loop at half Dovecot's peak session rate: p99 below Dovecot's",
              "not measured" if a is None or b is None else f"{a / 1000:.1f} against {b / 1000:.1f} ms",
              None if a is None or b is None else a < b and not failed, note)

        runs = [(k, r["error_total"]) for (s, k), rs in self.runs.items() if s == "pop3sd" for r in rs]
        missing = [k for (s, k), rs in self.runs.items() if s == "pop3sd" and not rs and k in self.expected() + ("idle",)]
        errs = sum(e for _, e in runs)
        by_scenario = {}
        for k, e in runs:
            by_scenario[k] = by_scenario.get(k, 0) + e
        check("zero errors in every run",
              f"{errs} in {len(runs)} runs" + (f"; no report: {', '.join(missing)}" if missing else ""),
              None if not runs else errs == 0 and not missing,
              ", ".join(f"{k}: {e}" for k, e in by_scenario.items() if e))
        lines = ["| target | pop3sd in this run | | note |", "|---|---|---|---|"] + rows
        return lines, data

    def write(self):
        sbs, sbs_data = self.side_by_side()
        ceil, ceil_data = self.ceiling()
        tgt, tgt_data = self.targets()
        run = self.run
        head = (f"{run.get('cores', '?')} CPUs ({run.get('cpu', 'unknown CPU')}), kernel {run.get('kernel', '?')}, "
                f"TCP congestion control {run.get('tcp_congestion_control', '?')}; {run.get('date', 'undated')}. "
                f"{run.get('users_per_tenant', '?')} users per tenant, {run.get('concurrency', '?')} in flight, "
                f"{run.get('duration_s', '?')} s per scenario, {max(self.rounds(), 1)} round(s); offered: TLS 1.3, "
                f"{run.get('cipher_suite', '?')}, {run.get('key_exchange', '?')}.")
        lines = ["# pop3sd against Dovecot", "", head, ""] + sbs
        lines += ["", "## Hardware ceiling (criterion, same run)", ""]
        lines += ceil if self.crit else ["ceiling.txt is missing or has no estimates."]
        lines += ["", "## Targets (docs/benchmarks.md)", ""] + tgt
        md = "\n".join(lines) + "\n"
        result = {"run": run, "scenarios": sbs_data, "ceiling": ceil_data, "targets": tgt_data,
                  "criterion": self.crit}
        with open(os.path.join(self.out, "compare.md"), "w") as f:
            f.write(md)
        with open(os.path.join(self.out, "compare.json"), "w") as f:
            json.dump(result, f, indent=2)
        return md


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print("usage: compare_report.py RESULTS-DIRECTORY", file=sys.stderr)
        return 2
    sys.stdout.write(Report(argv[1]).write())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
