#!/usr/bin/python3
"""The REST twin of the control plane, /metrics and the health endpoints, with curl as the
client, against the real mesh-broker and real mesh-cli peers: every endpoint and every error
case (no token, bad JSON, unknown path, wrong method, oversized body and headers, garbage), and
`promtool check metrics` (Debian's prometheus) on the live exposition.
Usage: control_rest_test.py MESH_BROKER MESH_CLI"""
import base64, json, os, queue, re, shutil, signal, socket, subprocess, sys, threading, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh_test_support as support  # noqa: E402
from mesh_test_support import DEADLINE, Broker, Peer, offline_id, wait_for  # noqa: E402

BROKER, CLI = sys.argv[1:3]
WORK = support.setup(BROKER, CLI, "mesh-rest-test-")

# Every series DESIGN §7 names, present from the start.
SERIES = ["mesh_peers_total", "mesh_peers_connected", "mesh_messages_queue_size",
          "mesh_messages_sent_total", "mesh_messages_delivered_total",
          "mesh_messages_failed_total", "mesh_success_rate", "mesh_http_requests_total",
          "mesh_grpc_requests_total", "mesh_http_request_duration_seconds_bucket",
          "mesh_handshakes_completed_total", "mesh_handshake_duration_seconds_bucket",
          "mesh_delivery_latency_seconds_bucket", "mesh_store_write_duration_seconds_bucket",
          "mesh_store_size_bytes", "mesh_messages_forwarded_total", "mesh_cluster_members",
          "mesh_frames_rejected_total", "mesh_messages_rejected_total"]


def curl(broker, method, path, token=None, body=None, headers=(), timeout=DEADLINE):
    """(status, headers text, body text) of one request made by curl."""
    args = ["curl", "-sS", "-D", "-", "-X", method, "--max-time", str(timeout),
            "http://127.0.0.1:%d%s" % (broker.ports["http"], path)]
    if token is not None:
        args += ["-H", "Authorization: Bearer " + token]
    for header in headers:
        args += ["-H", header]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    out = subprocess.run(args, input=body.encode() if isinstance(body, str) else body,
                         capture_output=True, check=True).stdout.decode()
    head, _, text = out.partition("\r\n\r\n")
    return int(head.split()[1]), head, text


class RestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = Broker("main")

    @classmethod
    def tearDownClass(cls):
        cls.broker.stop()

    def api(self, method, path, body=None, expect=200):
        status, _, text = curl(self.broker, method, path, self.broker.token, body)
        self.assertEqual(status, expect, text)
        return json.loads(text)

    def assertError(self, status, text, code, expect_status):
        self.assertEqual(status, expect_status, text)
        error = json.loads(text)
        self.assertEqual(error["code"], code)
        self.assertTrue(error["message"])

    def test_health_needs_no_token(self):
        self.assertEqual(curl(self.broker, "GET", "/healthz")[0], 200)
        self.assertEqual(curl(self.broker, "GET", "/readyz")[0], 200)

    def test_metrics_pass_promtool_and_name_every_series(self):
        status, head, text = curl(self.broker, "GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("text/plain; version=0.0.4", head)
        check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                               capture_output=True)
        self.assertEqual(check.returncode, 0, check.stdout.decode() + check.stderr.decode())
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                 if line and not line.startswith("#")}
        for series in SERIES:
            self.assertIn(series, names)
        # No label carries a peer ID (43 characters of base64url).
        labels = " ".join(re.findall(r"\{[^}]*\}", text))
        self.assertIsNone(re.search(r'"[A-Za-z0-9_-]{43}"', labels))

    def test_the_api_needs_the_token(self):
        status, _, text = curl(self.broker, "GET", "/api/v1/stats")
        self.assertError(status, text, "UNAUTHENTICATED", 401)
        status, _, text = curl(self.broker, "GET", "/api/v1/stats", token="wrong")
        self.assertError(status, text, "UNAUTHENTICATED", 401)
        status, _, text = curl(self.broker, "POST", "/api/v1/messages", body="{}")
        self.assertError(status, text, "UNAUTHENTICATED", 401)

    def test_unknown_paths_wrong_methods_and_bad_json(self):
        token = self.broker.token
        status, _, text = curl(self.broker, "GET", "/api/v1/nothing", token)
        self.assertError(status, text, "NOT_FOUND", 404)
        status, head, text = curl(self.broker, "POST", "/api/v1/stats", token)
        self.assertError(status, text, "INVALID_ARGUMENT", 405)
        self.assertIn("Allow: GET", head)
        status, head, text = curl(self.broker, "PUT", "/api/v1/peers/x", token)
        self.assertEqual(status, 405)
        self.assertIn("Allow: GET, DELETE", head)
        status, _, text = curl(self.broker, "POST", "/api/v1/messages", token, body="{not json")
        self.assertError(status, text, "INVALID_ARGUMENT", 400)
        status, _, text = curl(self.broker, "POST", "/api/v1/messages", token,
                               body='{"to": 5, "payload": "aGk="}')
        self.assertError(status, text, "INVALID_ARGUMENT", 400)
        status, _, text = curl(self.broker, "GET", "/api/v1/peers?page_size=many", token)
        self.assertError(status, text, "INVALID_ARGUMENT", 400)
        status, _, text = curl(self.broker, "GET", "/api/v1/peers?page_size=1001", token)
        self.assertError(status, text, "INVALID_ARGUMENT", 400)
        status, _, text = curl(self.broker, "GET", "/api/v1/peers/not-an-id", token)
        self.assertError(status, text, "INVALID_ARGUMENT", 400)
        status, _, text = curl(self.broker, "GET", "/api/v1/peers/" + offline_id(), token)
        self.assertError(status, text, "NOT_FOUND", 404)
        status, _, text = curl(self.broker, "DELETE", "/api/v1/peers/" + offline_id(), token)
        self.assertError(status, text, "NOT_FOUND", 404)

    def test_oversized_bodies_and_headers_are_refused(self):
        status, _, text = curl(self.broker, "POST", "/api/v1/messages", self.broker.token,
                               body=b"{" + b" " * (3 << 20) + b"}")
        self.assertError(status, text, "INVALID_ARGUMENT", 413)
        status, _, text = curl(self.broker, "GET", "/api/v1/stats", self.broker.token,
                               headers=["X-Filler: " + "x" * 20000])
        self.assertEqual(status, 431, text)
        self.assertTrue(self.broker.alive())

    def test_garbage_gets_400_and_the_broker_carries_on(self):
        with socket.create_connection(("127.0.0.1", self.broker.ports["http"]),
                                      timeout=DEADLINE) as sock:
            sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
            answer = sock.recv(4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)
        self.assertEqual(curl(self.broker, "GET", "/healthz")[0], 200)

    def test_keep_alive_serves_several_requests_on_one_connection(self):
        url = "http://127.0.0.1:%d/healthz" % self.broker.ports["http"]
        out = subprocess.run(["curl", "-sv", url, url], capture_output=True, text=True)
        self.assertEqual(out.stdout, "ok\nok\n")
        self.assertIn("Re-using existing connection", out.stderr)

    def test_stats_members_and_an_offline_mailbox(self):
        stats = self.api("GET", "/api/v1/stats")
        self.assertEqual(len(stats["nodeId"]), 43)
        self.assertTrue(stats["ready"])
        members = self.api("GET", "/api/v1/members")["members"]
        self.assertEqual(members[0]["state"], "ALIVE")
        bob = offline_id()
        sent = self.api("POST", "/api/v1/messages", body=json.dumps({"to": bob, "payload": "aGk="}))
        self.assertEqual(sent["status"], "ACCEPTED")
        self.assertEqual(self.api("GET", "/api/v1/mailboxes/" + bob)["messages"], "1")
        self.assertEqual(self.api("DELETE", "/api/v1/mailboxes/" + bob)["purged"], "1")
        self.assertEqual(self.api("GET", "/api/v1/mailboxes/" + bob)["messages"], "0")

    def test_a_peer_over_rest_and_its_events_over_sse(self):
        events = subprocess.Popen(
            ["curl", "-sN", "--max-time", str(DEADLINE), "-H",
             "Authorization: Bearer " + self.broker.token,
             "http://127.0.0.1:%d/api/v1/events" % self.broker.ports["http"]],
            stdout=subprocess.PIPE, text=True)
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(l) for l in events.stdout], daemon=True)
        reader.start()
        # The stream is open once an event reaches it; throwaway peers make them.
        support.open_stream(lambda n: Peer(self.broker, "warmup%d" % n), lambda: not lines.empty(),
                            "the event stream to open")
        dave = Peer(self.broker, "dave")
        while True:
            line = lines.get(timeout=DEADLINE)
            if line.startswith("data: ") and dave.id in line:
                self.assertIn("peerConnected", line)
                break
        events.terminate()
        events.wait(timeout=DEADLINE)
        reader.join(timeout=DEADLINE)
        events.stdout.close()
        peer = wait_for(lambda: [p for p in self.api("GET", "/api/v1/peers?page_size=1000")["peers"]
                                 if p["id"] == dave.id], "dave in the peer list")[0]
        self.assertTrue(peer["connected"])
        self.assertEqual(self.api("GET", "/api/v1/peers/" + dave.id)["id"], dave.id)
        sent = self.api("POST", "/api/v1/messages",
                        body=json.dumps({"to": dave.id, "payload": "aGVsbG8="}))
        self.assertEqual(sent["status"], "ACCEPTED")
        self.assertEqual(dave.next_message()["payload"], "hello")
        self.api("DELETE", "/api/v1/peers/" + dave.id)
        dave.stop()


class RestDrainTest(unittest.TestCase):
    def test_drain_turns_readyz_off(self):
        broker = Broker("drain")
        try:
            status, _, text = curl(broker, "POST", "/api/v1/drain", broker.token)
            self.assertEqual(status, 200, text)
            self.assertTrue(json.loads(text)["started"])
            self.assertEqual(curl(broker, "GET", "/readyz")[0], 503)
            self.assertFalse(json.loads(curl(broker, "POST", "/api/v1/drain", broker.token)[2])
                             .get("started", False))
        finally:
            broker.stop()


class RestStoreFullTest(unittest.TestCase):
    """The store's high-water marks: Sends get STORE_FULL and /readyz turns 503 while /healthz
    stays 200 (full is not broken); a purge brings readiness and Sends back."""

    def send(self, broker, to, size=1000):
        """(HTTP status, JSON body) of a REST Send of `size` bytes to `to`."""
        payload = base64.b64encode(b"x" * size).decode()
        status, _, text = curl(broker, "POST", "/api/v1/messages", broker.token,
                               json.dumps({"to": to, "payload": payload}))
        return status, json.loads(text)

    def test_a_purge_brings_a_full_store_back(self):
        broker = Broker("full", "--store-max-bytes", "20000")
        try:
            self.assertEqual(curl(broker, "GET", "/readyz")[0], 200)
            bob = offline_id()
            accepted = 0
            for _ in range(100):
                status, body = self.send(broker, bob)
                if status != 200:
                    break
                self.assertEqual(body["status"], "ACCEPTED")
                accepted += 1
            self.assertEqual(status, 429, body)
            self.assertEqual(body["code"], "RESOURCE_EXHAUSTED")
            self.assertIn("STORE_FULL", body["message"])
            self.assertGreater(accepted, 0)
            self.assertEqual(curl(broker, "GET", "/readyz")[0], 503)
            self.assertEqual(curl(broker, "GET", "/healthz")[0], 200)
            stats = json.loads(curl(broker, "GET", "/api/v1/stats", broker.token)[2])
            self.assertTrue(stats["storeFull"])
            self.assertFalse(stats.get("ready", False))
            # Deletes are never refused at the mark: the purge frees the queued bytes.
            status, _, text = curl(broker, "DELETE", "/api/v1/mailboxes/" + bob, broker.token)
            self.assertEqual(status, 200, text)
            self.assertEqual(json.loads(text)["purged"], str(accepted))
            wait_for(lambda: curl(broker, "GET", "/readyz")[0] == 200, "readiness after the purge")
            status, body = self.send(broker, bob)
            self.assertEqual(status, 200, body)
            self.assertEqual(body["status"], "ACCEPTED")
            self.assertIn('"event":"store_full"', broker.log_text())
            self.assertIn('"event":"store_not_full"', broker.log_text())
        finally:
            broker.stop()

    def test_a_volume_under_its_free_space_mark_is_full(self):
        # Every real volume has less than 100% free: the statfs mark is always crossed.
        broker = Broker("volume-full", "--store-min-free-percent", "100")
        try:
            status, body = self.send(broker, offline_id())
            self.assertEqual(status, 429, body)
            self.assertIn("STORE_FULL", body["message"])
            self.assertIn("--store-min-free-percent", body["message"])
            self.assertEqual(curl(broker, "GET", "/readyz")[0], 503)
            self.assertEqual(curl(broker, "GET", "/healthz")[0], 200)
        finally:
            broker.stop()


class TokenReloadTest(unittest.TestCase):
    def test_admin_token_is_reread_when_it_changes_and_on_sighup(self):
        broker = Broker("token-reload")
        path = os.path.join(broker.dir, "data", "admin.token")

        def rewrite(token, keep_mtime=False):
            """Replaces the file as a Secret volume does; keep_mtime hides the change from the
            broker's watch, so only SIGHUP can make it read the file."""
            before = os.stat(path)
            with open(os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(token + "\n")
            os.replace(path + ".new", path)
            if keep_mtime:
                os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

        def accepted(token):
            return curl(broker, "GET", "/api/v1/stats", token)[0] == 200 or None

        try:
            old, new, hup = broker.token, "n" * 32, "h" * 32
            rewrite(new)
            wait_for(lambda: accepted(new), "the changed token file to be read")
            self.assertEqual(curl(broker, "GET", "/api/v1/stats", old)[0], 401)
            rewrite(hup, keep_mtime=True)
            broker.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: accepted(hup), "SIGHUP to re-read the token file")
            self.assertEqual(curl(broker, "GET", "/api/v1/stats", new)[0], 401)
            # A file that does not hold a token is logged; the token in use stays.
            rewrite("short")
            wait_for(lambda: "admin_token_reload_failed" in broker.log_text() or None,
                     "the bad token file to be reported")
            self.assertEqual(curl(broker, "GET", "/api/v1/stats", hup)[0], 200)
        finally:
            broker.stop()


class RestTlsTest(unittest.TestCase):
    def test_https_with_the_given_certificate(self):
        cert, key = support.self_signed_certificate("tls-files")
        broker = Broker("tls", "--tls-cert-file", cert, "--tls-key-file", key)
        try:
            base = "https://127.0.0.1:%d" % broker.ports["http"]
            out = subprocess.run(["curl", "-sS", "--cacert", cert, "--max-time", str(DEADLINE),
                                  "-H", "Authorization: Bearer " + broker.token,
                                  base + "/api/v1/stats"], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertTrue(json.loads(out.stdout)["ready"])
            # Plain HTTP on the TLS port gets no answer, and the broker carries on.
            plain = subprocess.run(["curl", "-sS", "--max-time", "5",
                                    "http://127.0.0.1:%d/healthz" % broker.ports["http"]],
                                   capture_output=True, text=True)
            self.assertNotEqual(plain.returncode, 0)
            self.assertTrue(broker.alive())
        finally:
            broker.stop()

    def test_a_renewed_certificate_is_served_after_sighup(self):
        first, first_key = support.self_signed_certificate("tls-first")
        renewed, renewed_key = support.self_signed_certificate("tls-renewed")
        live = os.path.join(os.path.dirname(first), "live")
        os.makedirs(live)
        cert, key = os.path.join(live, "tls.crt"), os.path.join(live, "tls.key")

        def install(source_cert, source_key):
            for source, target in ((source_cert, cert), (source_key, key)):
                shutil.copyfile(source, target + ".new")
                os.replace(target + ".new", target)  # as a Secret volume swaps its files

        def healthz(ca_file):
            return subprocess.run(["curl", "-sS", "--cacert", ca_file, "--max-time", str(DEADLINE),
                                   "https://127.0.0.1:%d/healthz" % broker.ports["http"]],
                                  capture_output=True, text=True).returncode

        install(first, first_key)
        broker = Broker("tls-renew", "--tls-cert-file", cert, "--tls-key-file", key)
        try:
            self.assertEqual(healthz(first), 0)
            self.assertNotEqual(healthz(renewed), 0)
            install(renewed, renewed_key)
            broker.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: healthz(renewed) == 0, "HTTPS to serve the renewed certificate")
            self.assertNotEqual(healthz(first), 0)
        finally:
            broker.stop()


if __name__ == "__main__":
    support.run_tests()
