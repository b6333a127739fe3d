#!/usr/bin/env python3
"""Tests of bench/compare_report.py: criterion parsing, the ceiling and
target arithmetic, and reports with parts missing. Run by scripts/test:

    python3 -m unittest discover -s bench -p 'test_*.py'
"""

import json
import os
import shutil
import tempfile
import unittest

import compare_report as cr

HERE = os.path.dirname(os.path.abspath(__file__))
RUN12 = os.path.join(HERE, "results", "2026-11-28-2core-run12")

CRITERION = """\
handshake/server_full_tls13_ecdsa_p256
                        time:   [145.87 µs 150.25 µs 154.79 µs]
                        change: [-14.673% -12.167% -9.4173%] (p = 0.00 < 0.05)
                        Performance has improved.
handshake/x25519_keygen_and_agree
                        time:   [99.570 µs 99.642 µs 99.725 µs]
handshake/ecdsa_p256_sign
                        time:   [23.483 µs 23.892 µs 24.276 µs]
short/name              time:   [950.00 ns 1.0000 µs 1.0500 µs]

record_encrypt_16k/ring_seal_in_place/aes128gcm
                        time:   [2.3275 µs 2.3780 µs 2.4342 µs]
                        thrpt:  [6.2684 GiB/s 6.4166 GiB/s 6.5559 GiB/s]
                 change:
                        time:   [+11.694% +14.807% +17.850%] (p = 0.00 < 0.05)
                        thrpt:  [-15.147% -12.897% -10.470%]
record_encrypt_16k/ring_seal_in_place/aes256gcm
                        time:   [2.7695 µs 2.8161 µs 2.8688 µs]
                        thrpt:  [5.3190 GiB/s 5.4184 GiB/s 5.5095 GiB/s]
"""


def report(scenario, **over):
    """A load generator report with the fields compare_report reads."""
    r = {"scenario": scenario, "ops": 1000, "ops_per_s": 100.0, "error_total": 0, "errors": {},
         "latency_us": {"p50": 1000, "p99": 5000}, "tls_version": "TLSv1_3",
         "cipher_suite": "TLS13_AES_256_GCM_SHA384", "key_exchange": "X25519",
         "server_cpu_us_per_op": 200.0, "server_process_cpu_us_per_op": 190.0,
         "resumed_fraction": 0.0, "attempts_resumed_fraction": 0.0, "resumption_attempts": 0,
         "payload_bytes": 0, "payload_mb_per_s": 0.0, "server_cpu_s": 0.2, "server_process_cpu_s": 0.19,
         "rate": None, "idle": None}
    r.update(over)
    return r


class ParseCriterion(unittest.TestCase):
    def test_estimates_are_the_middle_figure_in_microseconds(self):
        c = cr.parse_criterion(CRITERION)
        self.assertAlmostEqual(c["handshake/server_full_tls13_ecdsa_p256"]["us"], 150.25)
        self.assertAlmostEqual(c["handshake/ecdsa_p256_sign"]["us"], 23.892)
        self.assertIsNone(c["handshake/ecdsa_p256_sign"]["bytes_per_s"])

    def test_a_short_name_on_the_time_line_and_nanoseconds(self):
        self.assertAlmostEqual(cr.parse_criterion(CRITERION)["short/name"]["us"], 1.0)

    def test_throughput_is_taken_and_change_lines_are_not(self):
        c = cr.parse_criterion(CRITERION)
        aes = c["record_encrypt_16k/ring_seal_in_place/aes128gcm"]
        self.assertAlmostEqual(aes["us"], 2.378)
        self.assertAlmostEqual(aes["bytes_per_s"], 6.4166 * (1 << 30))
        self.assertAlmostEqual(c["record_encrypt_16k/ring_seal_in_place/aes256gcm"]["bytes_per_s"],
                               5.4184 * (1 << 30))

    def test_nothing_to_parse(self):
        self.assertEqual(cr.parse_criterion("error: could not compile\n"), {})


class Run12(unittest.TestCase):
    """The report over a real run's files (compare.sh run 12)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        shutil.copytree(RUN12, self.dir, dirs_exist_ok=True)
        self.md = cr.Report(self.dir).write()
        with open(os.path.join(self.dir, "compare.json")) as f:
            self.json = json.load(f)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def target(self, prefix):
        return next(t for t in self.json["targets"] if t["target"].startswith(prefix))

    def test_side_by_side_ratios(self):
        s = self.json["scenarios"]
        self.assertAlmostEqual(s["handshake"]["server CPU per op"]["ratio"], 907.6 / 260.1, places=2)
        self.assertAlmostEqual(s["session"]["ops/s"]["ratio"], 1913.5 / 287.2, places=2)
        self.assertAlmostEqual(s["retr-1mib"]["server CPU per MiB"]["pop3sd"], 827.3, places=0)

    def test_ceiling_shares(self):
        c = self.json["ceiling"]
        hs = c["full TLS 1.3 handshake: rustls + ring, in memory, same suite"]
        self.assertAlmostEqual(hs["pop3sd"]["ceiling_us"], 150.25, places=2)
        self.assertAlmostEqual(hs["pop3sd"]["times_ceiling"], 260.1 / 150.25, places=2)
        # Dovecot negotiated AES-256-GCM in that run, and run 12 had no
        # in-memory figure for that suite: none is made up.
        self.assertNotIn("dovecot", hs)
        crypto = c["full handshake: ring's key exchange + ECDSA P-256 signature"]
        self.assertAlmostEqual(crypto["pop3sd"]["ceiling_us"], 99.642 + 23.892, places=2)
        retr = c["1 MiB of RETR: the suite's encryption alone (ring, one core)"]
        # pop3sd negotiated AES-128-GCM and Dovecot AES-256-GCM in that run:
        # each is held to its own suite's cost.
        aes128 = (1 << 20) / (6.4166 * (1 << 30)) * 1e6
        aes256 = (1 << 20) / (5.4184 * (1 << 30)) * 1e6
        self.assertAlmostEqual(retr["pop3sd"]["share_of_ceiling"], aes128 / 827.3, places=3)
        self.assertAlmostEqual(retr["dovecot"]["share_of_ceiling"], aes256 / 9872.9, places=3)
        self.assertIn("TLS13_AES_128_GCM_SHA256", self.md)

    def test_targets(self):
        self.assertFalse(self.target("full handshake")["met"])
        self.assertIn("1.73×", self.target("full handshake")["measured"])
        self.assertFalse(self.target("session: server CPU")["met"])
        self.assertTrue(self.target("sessions/s")["met"])
        self.assertTrue(self.target("resumption")["met"])
        self.assertTrue(self.target("memory per idle")["met"])
        self.assertTrue(self.target("open loop")["met"])
        self.assertTrue(self.target("zero errors")["met"])
        retr = self.target("RETR: server CPU")
        self.assertFalse(retr["met"])
        self.assertIn("estimate", retr["note"])

    def test_a_run_before_session_50k_is_checked_on_session_and_says_so(self):
        self.assertNotIn("session-50k", self.md)
        self.assertIn("not the target's shape", self.target("session: server CPU")["note"])
        self.assertIn("not the target's shape", self.target("sessions/s")["note"])


class Partial(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.dir)

    def put(self, name, value):
        with open(os.path.join(self.dir, name + ".json"), "w") as f:
            json.dump(value, f)

    def write(self):
        md = cr.Report(self.dir).write()
        with open(os.path.join(self.dir, "compare.json")) as f:
            return md, json.load(f)

    def test_missing_reports_and_ceiling_are_said_not_guessed(self):
        self.put("pop3sd-handshake", report("handshake"))
        md, j = self.write()
        self.assertIn("| session | missing | no report | no report |", md)
        self.assertIn("| handshake | missing | ok | no report |", md)
        self.assertIn("ceiling.txt is missing", md)
        by = {t["target"]: t for t in j["targets"]}
        self.assertIsNone(by["full handshake: server CPU at most 1.3× the in-memory handshake"]["met"])
        # One run reported, five did not: that is not "zero errors".
        zero = by["zero errors in every run"]
        self.assertFalse(zero["met"])
        self.assertIn("no report", zero["measured"])

    def test_errors_fail_the_zero_errors_target(self):
        for s in cr.SCENARIOS:
            self.put("pop3sd-" + s, report(s, error_total=3 if s == "session" else 0))
            self.put("dovecot-" + s, report(s))
        self.put("pop3sd-idle", report("idle", idle={"connections": 10, "bytes_per_connection": 20000}))
        self.put("dovecot-idle", report("idle", idle={"connections": 10, "bytes_per_connection": 700000}))
        with open(os.path.join(self.dir, "ceiling.txt"), "w") as f:
            f.write(CRITERION)
        _, j = self.write()
        by = {t["target"]: t for t in j["targets"]}
        self.assertFalse(by["zero errors in every run"]["met"])
        self.assertIn("session: 3", by["zero errors in every run"]["note"])
        # 20,000 bytes is over 16 KiB.
        self.assertFalse(by["memory per idle logged-in TLS connection at most 16 KiB"]["met"])
        # Equal rates are not 3× better.
        self.assertFalse(by["sessions/s at least 3× Dovecot's"]["met"])
        # The same p99 is not below.
        self.assertFalse(by["open loop at half Dovecot's peak session rate: p99 below Dovecot's"]["met"])

    def test_errors_in_the_open_loop_void_its_p99_comparison(self):
        # Dovecot's failed sessions have no latency; its better-looking p99
        # must not count, and neither may ours beside errors of our own.
        for srv, p99, errors in (("pop3sd", 9000, 0), ("dovecot", 12000, 5)):
            self.put(f"{srv}-session-open-1", report("session-open", rate=50.0, error_total=errors,
                                                    latency_us={"p50": 1000, "p99": p99}))
        _, j = self.write()
        t = {t["target"]: t for t in j["targets"]}["open loop at half Dovecot's peak session rate: p99 below Dovecot's"]
        self.assertFalse(t["met"])
        self.assertIn("dovecot: 5 errors, p99 not comparable", t["note"])
        self.assertIn("50 sessions/s", t["note"])

    def test_rounds_give_medians_spreads_and_totals(self):
        with open(os.path.join(self.dir, "ceiling.txt"), "w") as f:
            f.write(CRITERION)
        cpu = {1: 300.0, 2: 200.0, 3: 250.0}
        for n in (1, 2, 3):
            self.put(f"pop3sd-handshake-{n}", report("handshake", cipher_suite="TLS13_AES_128_GCM_SHA256",
                                                    server_cpu_us_per_op=cpu[n]))
            self.put(f"dovecot-handshake-{n}", report("handshake", server_cpu_us_per_op=900.0 + n))
            # One attempt in the second round did not resume: the median
            # round is 100 %, but the target counts every attempt.
            self.put(f"pop3sd-resume-{n}", report("resume", resumption_attempts=100,
                                                 resumed=99 if n == 2 else 100,
                                                 attempts_resumed_fraction=0.99 if n == 2 else 1.0,
                                                 error_total=1 if n == 3 else 0))
            self.put(f"dovecot-resume-{n}", report("resume"))
        # "session-open-1" is a round of session-open, not of session.
        self.put("pop3sd-session-open-1", report("session-open", ops_per_s=7.0))
        md, j = self.write()
        hs = j["scenarios"]["handshake"]["server CPU per op"]
        self.assertEqual(hs["pop3sd"], 250.0)
        self.assertEqual(hs["rounds"]["pop3sd"], [300.0, 200.0, 250.0])
        self.assertAlmostEqual(hs["ratio"], 902.0 / 250.0)
        self.assertIn("200–300 µs; 901–903 µs", md)
        self.assertIn("Medians of 3 rounds", md)
        self.assertEqual(j["scenarios"]["resume"]["errors"]["pop3sd"], 1)
        self.assertNotIn("session", j["scenarios"])
        by = {t["target"]: t for t in j["targets"]}
        self.assertFalse(by["resumption: 100 % of attempts resumed"]["met"])
        self.assertIn("99.7 % of 300", by["resumption: 100 % of attempts resumed"]["measured"])
        self.assertIn("250 µs against 150 µs", by["full handshake: server CPU at most 1.3× the in-memory handshake"]["measured"])
        self.assertIn("resume: 1", by["zero errors in every run"]["note"])

    def test_the_session_targets_use_session_50k_when_it_ran(self):
        self.put("run", {"scenarios": list(cr.SCENARIOS)})
        for server, cpu, rate in (("pop3sd", 400.0, 900.0), ("dovecot", 3000.0, 200.0)):
            self.put(f"{server}-session-1", report("session", server_cpu_us_per_op=cpu, ops_per_s=rate))
            self.put(f"{server}-session-50k-1", report("session-50k", server_cpu_us_per_op=cpu - 150,
                                                       ops_per_s=rate * 1.1, ops=10, payload_bytes=512340))
        md, j = self.write()
        by = {t["target"]: t for t in j["targets"]}
        session = by["session: server CPU at most 270 µs (reference machine)"]
        self.assertTrue(session["met"])
        self.assertEqual(session["measured"], "250 µs")
        self.assertNotIn("target's shape", session["note"])
        self.assertEqual(by["sessions/s at least 3× Dovecot's"]["measured"], "4.50×")
        payload = j["scenarios"]["session-50k"]["RETR payload per session"]
        self.assertEqual(payload["pop3sd"], 51234.0)
        self.assertAlmostEqual(payload["ratio"], 1.0)
        # The run listed its scenarios: those it did not report are lost.
        self.assertIn("| handshake | missing | no report | no report |", md)
        self.assertIn("no report: handshake", by["zero errors in every run"]["measured"])

    def test_key_exchange_picks_the_matching_ceiling(self):
        text = CRITERION + "handshake/p256_keygen_and_agree\n                        time:   [80 µs 87.0 µs 90 µs]\n"
        with open(os.path.join(self.dir, "ceiling.txt"), "w") as f:
            f.write(text)
        self.put("run", {"key_exchange": "secp256r1"})
        self.put("pop3sd-resume", report("resume"))
        self.put("dovecot-resume", report("resume"))
        _, j = self.write()
        self.assertAlmostEqual(j["ceiling"]["resumed handshake: ring's key exchange"]["pop3sd"]["ceiling_us"], 87.0)

    def test_the_handshake_is_held_to_its_own_suite(self):
        text = CRITERION + "handshake/server_full_tls13_ecdsa_p256_aes256\n                        time:   [170 µs 177.0 µs 184 µs]\n"
        with open(os.path.join(self.dir, "ceiling.txt"), "w") as f:
            f.write(text)
        self.put("pop3sd-handshake", report("handshake", cipher_suite="TLS13_AES_128_GCM_SHA256"))
        self.put("dovecot-handshake", report("handshake", cipher_suite="TLS13_AES_256_GCM_SHA384"))
        md, j = self.write()
        hs = j["ceiling"]["full TLS 1.3 handshake: rustls + ring, in memory, same suite"]
        self.assertAlmostEqual(hs["pop3sd"]["ceiling_us"], 150.25)
        self.assertAlmostEqual(hs["dovecot"]["ceiling_us"], 177.0)
        self.assertIn("TLS13_AES_128_GCM_SHA256: 150 µs; TLS13_AES_256_GCM_SHA384: 177 µs", md)
        # ChaCha20 has no in-memory figure: not measured, not guessed.
        self.put("pop3sd-handshake", report("handshake", cipher_suite="TLS13_CHACHA20_POLY1305_SHA256"))
        _, j = self.write()
        by = {t["target"]: t for t in j["targets"]}
        self.assertIsNone(by["full handshake: server CPU at most 1.3× the in-memory handshake"]["met"])

    def test_the_tcp_floor_completes_the_ceiling_of_a_whole_connection(self):
        with open(os.path.join(self.dir, "ceiling.txt"), "w") as f:
            f.write(CRITERION)
        suite = "TLS13_AES_128_GCM_SHA256"
        for who, cpu in (("pop3sd", 230.0), ("dovecot", 700.0)):
            self.put(f"{who}-handshake-1", report("handshake", cipher_suite=suite, server_cpu_us_per_op=cpu + 5,
                                                  server_process_cpu_us_per_op=cpu))
            self.put(f"{who}-session-50k-1", report("session-50k", cipher_suite=suite, ops=10,
                                                    payload_bytes=10 * 51368, server_cpu_us_per_op=cpu * 2 + 5,
                                                    server_process_cpu_us_per_op=cpu * 2))
        # Three rounds of the floor: the median of its own CPU is taken (its
        # machine-wide figure is not: see FLOOR_SCENARIOS).
        for r, (hs, ss) in enumerate(((60.0, 120.0), (50.0, 110.0), (70.0, 130.0)), 1):
            self.put(f"floor-handshake-{r}", report("tcp-floor", server_cpu_us_per_op=1.0, server_process_cpu_us_per_op=hs))
            self.put(f"floor-session-50k-{r}", report("tcp-floor", server_cpu_us_per_op=1.0,
                                                      server_process_cpu_us_per_op=ss))
        md, j = self.write()
        c = j["ceiling"]
        hs = c["full handshake: in memory (same suite) + the TCP floor of its exchange (processes' own CPU)"]
        self.assertAlmostEqual(hs["pop3sd"]["ceiling_us"], 150.25 + 60.0)
        self.assertAlmostEqual(hs["dovecot"]["times_ceiling"], 700.0 / 210.25)
        session = c["session-50k: in-memory handshake + its RETR's encryption + the TCP floor of its exchange "
                    "(processes' own CPU)"]
        aes = 51368 / (6.4166 * (1 << 30)) * 1e6
        self.assertAlmostEqual(session["pop3sd"]["ceiling_us"], 150.25 + aes + 120.0)
        self.assertEqual(c["tcp floor"], {"handshake": 60.0, "session-50k": 120.0})
        self.assertIn("TCP floor (`tcp-floor`", md)
        by = {t["target"]: t for t in j["targets"]}
        note = by["full handshake: server CPU at most 1.3× the in-memory handshake"]["note"]
        self.assertIn("210 µs, 1.40× the in-memory handshake before any server code; pop3sd's processes 1.09× that",
                      note)
        self.assertIn("278 µs, pop3sd's processes 1.66× that",
                      by["session: server CPU at most 270 µs (reference machine)"]["note"])
        # A floor run with errors measured something else: no ceiling from it.
        self.put("floor-handshake-2", report("tcp-floor", error_total=1))
        _, j = self.write()
        self.assertNotIn("full handshake: in memory (same suite) + the TCP floor of its exchange (processes' own CPU)",
                         j["ceiling"])
        self.assertEqual(j["ceiling"]["tcp floor"], {"session-50k": 120.0})


if __name__ == "__main__":
    unittest.main()
