#!/usr/bin/python3
"""The mesh (DESIGN §5) against real processes on loopback: three mesh-broker processes, each
with its own data dir and ports, joined by one seed and the cluster secret; real peers
(mesh-cli) connect to any of them. Covers delivery in all six directions, a mailbox pulled from
its home to the broker the recipient connects to (in order), brokers with a wrong secret or
none refused without disturbing the mesh, presence reaching every broker, and a drain (SIGTERM)
that hands a mailbox to the remaining members before it exits 0 with an empty store.
Usage: mesh_test.py MESH_BROKER MESH_CLI"""
import base64, hashlib, json, os, signal, socket, subprocess, sys, threading, time, unittest
import urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh_test_support as support  # noqa: E402
from mesh_test_support import DEADLINE, Broker, Peer, keygen, wait_for  # noqa: E402

BROKER, CLI = sys.argv[1:3]
WORK = support.setup(BROKER, CLI, "mesh-cluster-test-")


def write_secret(name):
    path = os.path.join(WORK, name)
    with open(path, "w") as out:
        out.write(os.urandom(32).hex() + "\n")
    os.chmod(path, 0o600)
    return path


SECRET = write_secret("cluster.secret")


def raw_id(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def home_of(peer, nodes):
    """Rendezvous hashing as DESIGN §5 states it, written independently of the broker."""
    def score(node):
        return int.from_bytes(hashlib.sha256(raw_id(node) + raw_id(peer)).digest()[:8], "big")
    return sorted(nodes, key=lambda node: (-score(node), raw_id(node)))[0]


def rest(broker, path, method="GET"):
    request = urllib.request.Request(
        "http://127.0.0.1:%d%s" % (broker.ports["http"], path), method=method,
        headers={"authorization": "Bearer " + broker.token})
    with urllib.request.urlopen(request, timeout=DEADLINE) as response:
        body = response.read()
    return json.loads(body) if body else {}


def node_of(broker, peer):
    """The node GetPeer says the peer is connected to; None while it knows nothing of it."""
    try:
        return rest(broker, "/api/v1/peers/" + peer).get("nodeId")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def metric(broker, name, labels=""):
    """The value of one series of the broker's /metrics (0 when absent)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % broker.ports["http"],
                                timeout=DEADLINE) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + labels + " "):
                return float(line.split()[-1])
    return 0.0


def send(broker, key, to, text):
    out = subprocess.run([CLI, "send", "--broker", broker.peer_address, "--key", key, "--to", to,
                          text], capture_output=True, text=True, timeout=DEADLINE)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout else out.stderr


def start_member(name, seed=None, secret=SECRET):
    args = ["--listen-cluster", "127.0.0.1:0", "--cluster-secret-file", secret,
            "--suspect-timeout-ms", "2000"]
    if seed is not None:
        args += ["--cluster-peers", "127.0.0.1:%d" % seed.ports["cluster"]]
    return Broker(name, *args)


def live_members(broker):
    return [m for m in rest(broker, "/api/v1/members")["members"] if m["state"] == "ALIVE"]


def start_mesh(prefix, n):
    """n members joined through the first, each seeing all n live."""
    first = start_member(prefix + "0")
    brokers = [first] + [start_member("%s%d" % (prefix, i), first) for i in range(1, n)]
    for broker in brokers:
        wait_for(lambda b=broker: len(live_members(b)) == n, "%d live members" % n)
    return brokers


def key_homed_at(broker, brokers, prefix):
    """(key file, peer ID) of a fresh key whose home among `brokers` is `broker`."""
    nodes = [b.node_id for b in brokers]
    while True:
        key = os.path.join(WORK, "%s-%d.key" % (prefix, time.monotonic_ns()))
        peer = keygen(key)
        if home_of(peer, nodes) == broker.node_id:
            return key, peer


class MeshTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        first = start_member("b0")
        cls.brokers = [first, start_member("b1", first), start_member("b2", first)]
        for broker in cls.brokers:
            wait_for(lambda b=broker: len(live_members(b)) == 3, "three live members")
        cls.nodes = [b.node_id for b in cls.brokers]

    @classmethod
    def tearDownClass(cls):
        for broker in cls.brokers:
            if broker.alive():
                broker.stop()

    def test_every_direction_delivers_with_the_right_from(self):
        run = time.monotonic_ns()
        peers = [Peer(broker, "six-%d-%d" % (run, i)) for i, broker in enumerate(self.brokers)]
        try:
            for peer, broker in zip(peers, self.brokers):
                wait_for(lambda p=peer, b=broker: rest(b, "/api/v1/peers").get("peers"),
                         "the listener's session")
            senders = [os.path.join(self.brokers[i].dir, "sender-%d-%d.key" % (run, i))
                       for i in range(3)]
            sender_ids = [keygen(key) for key in senders]
            for i in range(3):
                for j in range(3):
                    if i == j:
                        continue
                    # Presence may still be on its way for a peer that just connected: the
                    # message then waits at the recipient's home, which streams it on.
                    self.assertEqual(send(self.brokers[i], senders[i], peers[j].id,
                                          "from %d to %d" % (i, j)), "ACCEPTED")
                    message = peers[j].next_message()
                    self.assertEqual(message["payload"], "from %d to %d" % (i, j))
                    self.assertEqual(message["from"], sender_ids[i])
        finally:
            for peer in peers:
                peer.stop()

    def test_offline_mailbox_kept_at_home_and_pulled_to_another_broker_in_order(self):
        home, sender_at, recipient_at = self.brokers
        while True:  # a recipient whose home is b0 (about one key in three)
            key = os.path.join(WORK, "offline-%d.key" % time.monotonic_ns())
            recipient = keygen(key)
            if home_of(recipient, self.nodes) == home.node_id:
                break
        sender = os.path.join(WORK, "pull-sender.key")
        keygen(sender)
        queued_before = metric(home, "mesh_messages_queue_size")
        texts = ["pull %02d" % i for i in range(12)]
        for text in texts:
            self.assertEqual(send(sender_at, sender, recipient, text), "ACCEPTED")
        wait_for(lambda: metric(home, "mesh_messages_queue_size") >= queued_before + len(texts),
                 "the home to hold the mailbox")
        self.assertEqual(metric(sender_at, "mesh_outbox_messages"), 0)
        listener = Peer.with_key(recipient_at, key)
        try:
            got = [listener.next_message()["payload"] for _ in texts]
            self.assertEqual(got, texts)
            # While the recipient stays connected its acks come back through the mesh.
            wait_for(lambda: int(rest(home, "/api/v1/mailboxes/" + recipient).get("messages", 0))
                     == 0, "the home to delete what the recipient acknowledged")
        finally:
            listener.stop()

    def test_a_connected_peer_is_located_by_every_broker(self):
        peer = Peer(self.brokers[2], "located")
        try:
            started = time.monotonic()
            for broker in self.brokers:
                wait_for(lambda b=broker: node_of(b, peer.id) == self.brokers[2].node_id,
                         "every broker to locate the peer")
            print("presence reached every broker in %.1f ms" % ((time.monotonic() - started) * 1e3))
        finally:
            peer.stop()

    def test_wrong_secret_and_no_secret_are_refused_and_the_mesh_works_on(self):
        target = self.brokers[0]
        failures_before = metric(target, "mesh_cluster_handshake_failures_total",
                                 '{reason="handshake_failed"}')
        intruder = start_member("intruder", target, write_secret("other.secret"))
        try:
            wait_for(lambda: metric(target, "mesh_cluster_handshake_failures_total",
                                    '{reason="handshake_failed"}') > failures_before,
                     "the wrong secret to be counted")
            self.assertIn("cluster_link_refused", target.log_text())
            self.assertEqual(len(live_members(intruder)), 1)
        finally:
            intruder.stop()
        # No secret at all: the peer protocol's handshake on the cluster port is refused at the
        # preamble (link kind 0 is not served there).
        out = subprocess.run([CLI, "ping", "--broker", "127.0.0.1:%d" % target.ports["cluster"],
                              "--key", os.path.join(WORK, "ping.key")],
                             capture_output=True, text=True, timeout=DEADLINE)
        self.assertNotEqual(out.returncode, 0)
        # And a broker given seeds but no secret refuses to start, saying why.
        refused = subprocess.run([BROKER, "--data-dir", os.path.join(WORK, "nosecret"),
                                  "--cluster-peers", "127.0.0.1:%d" % target.ports["cluster"],
                                  "--listen-peer", "127.0.0.1:0", "--listen-grpc", "",
                                  "--listen-http", "", "--listen-ws", ""],
                                 capture_output=True, text=True, timeout=DEADLINE)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("cluster-secret-file", refused.stderr)
        for broker in self.brokers:
            self.assertEqual(len(live_members(broker)), 3)
        self.test_every_direction_delivers_with_the_right_from()


class Proxy:
    """A TCP relay on loopback that can cut every connection through it and refuse new ones
    (a network partition of one cluster link, the processes untouched), then let them form
    again."""

    def __init__(self, target_port):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.connections = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.open:
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            self.open = False
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.connections = []

    def restore(self):
        with self.lock:
            self.open = True

    def close(self):
        self.cut()
        self.listener.close()


class LinkCutTest(unittest.TestCase):
    def test_messages_wait_in_the_outbox_while_the_link_is_cut_and_flow_when_it_forms_again(self):
        # Two members whose only link runs through proxies (each advertises its proxy).
        reserve = [socket.socket() for _ in range(2)]
        for s in reserve:
            s.bind(("127.0.0.1", 0))
        cluster_ports = [s.getsockname()[1] for s in reserve]
        for s in reserve:
            s.close()
        proxies = [Proxy(port) for port in cluster_ports]
        common = ["--cluster-secret-file", SECRET, "--suspect-timeout-ms", "60000"]
        a = Broker("cut-a", "--listen-cluster", "127.0.0.1:%d" % cluster_ports[0],
                   "--cluster-advertise", "127.0.0.1:%d" % proxies[0].port, *common)
        b = Broker("cut-b", "--listen-cluster", "127.0.0.1:%d" % cluster_ports[1],
                   "--cluster-advertise", "127.0.0.1:%d" % proxies[1].port,
                   "--cluster-peers", "127.0.0.1:%d" % proxies[0].port, *common)
        listener = None
        try:
            for broker in (a, b):
                wait_for(lambda x=broker: len(live_members(x)) == 2, "two live members")
            listener = Peer(b, "cut-recipient")
            wait_for(lambda: node_of(a, listener.id) == b.node_id, "a to locate the recipient")
            sender = os.path.join(WORK, "cut-sender.key")
            keygen(sender)
            for proxy in proxies:
                proxy.cut()
            wait_for(lambda: len(live_members(a)) == 1, "a to see the link down")
            texts = ["cut %d" % i for i in range(5)]
            for text in texts:
                self.assertEqual(send(a, sender, listener.id, text), "ACCEPTED")
            wait_for(lambda: metric(a, "mesh_outbox_messages") == len(texts),
                     "the messages to wait in a's outbox")
            self.assertTrue(listener.lines.empty())
            for proxy in proxies:
                proxy.restore()
            got = [listener.next_message()["payload"] for _ in texts]
            self.assertEqual(got, texts)
            wait_for(lambda: metric(a, "mesh_outbox_messages") == 0, "a's outbox to empty")
        finally:
            if listener:
                listener.stop()
            for proxy in proxies:
                proxy.close()
            for broker in (a, b):
                broker.stop()


class BalanceTest(unittest.TestCase):
    def test_a_broker_far_above_the_average_sends_some_peers_to_a_new_member(self):
        # Ten peers know both addresses but all connect while only the first broker exists.
        reserve = socket.socket()
        reserve.bind(("127.0.0.1", 0))
        later_port = reserve.getsockname()[1]
        reserve.close()
        first = start_member("bal-a")
        brokers = "%s,127.0.0.1:%d" % (first.peer_address, later_port)
        listeners = []
        second = None
        try:
            for i in range(10):
                key = os.path.join(WORK, "bal-%d.key" % i)
                keygen(key)
                listeners.append(subprocess.Popen(
                    [CLI, "listen", "--broker", brokers, "--key", key],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(lambda: metric(first, "mesh_peers_connected") == 10, "ten peers on a")
            second = Broker("bal-b", "--listen-cluster", "127.0.0.1:0", "--cluster-secret-file",
                            SECRET, "--cluster-peers", "127.0.0.1:%d" % first.ports["cluster"],
                            "--listen-peer", "127.0.0.1:%d" % later_port)
            # Average 5 over two brokers: the first sheds peers until it is within 20% of it.
            wait_for(lambda: metric(first, "mesh_peers_connected") <= 6
                     and metric(second, "mesh_peers_connected") >= 4, "the peers to rebalance")
            wait_for(lambda: metric(first, "mesh_peers_connected")
                     + metric(second, "mesh_peers_connected") == 10, "every peer connected")
            self.assertIn('"event":"rebalance"', first.log_text())
        finally:
            for listener in listeners:
                listener.terminate()
                listener.wait(timeout=DEADLINE)
            for broker in (first, second):
                if broker is not None:
                    broker.stop()


class SecretRotationTest(unittest.TestCase):
    def test_a_reloaded_two_line_secret_accepts_both_and_dials_with_the_first(self):
        old, new = os.urandom(32).hex(), os.urandom(32).hex()
        def secret_file(name, *lines):
            path = os.path.join(WORK, name)
            with open(path, "w") as out:
                out.write("\n".join(lines) + "\n")
            os.chmod(path, 0o640)  # group-readable, as Kubernetes mounts it
            return path
        rotating = secret_file("rotating.secret", old)
        a = Broker("rot-a", "--listen-cluster", "127.0.0.1:0", "--cluster-secret-file", rotating)
        joiners = []
        try:
            # Rotation step 1 on a: the new secret goes first, the old one stays accepted.
            secret_file("rotating.secret", new, old)
            a.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: '"event":"cluster_secret_reloaded"' in a.log_text(),
                     "a to reload its secret")
            seed = ["--cluster-peers", "127.0.0.1:%d" % a.ports["cluster"]]
            # One joiner finds a through DNS (--cluster-dns, as a headless Service is used).
            by_dns = ["--cluster-dns", "localhost:%d" % a.ports["cluster"]]
            for name, secret, seeds in (("rot-old", old, seed), ("rot-new", new, by_dns)):
                joiners.append(Broker(name, "--listen-cluster", "127.0.0.1:0",
                                      "--cluster-secret-file", secret_file(name + ".secret", secret),
                                      *seeds))
            names = lambda: {m["name"] for m in live_members(a)}
            wait_for(lambda: len(live_members(a)) == 3, "a broker on each secret to join a")
            stranger = Broker("rot-other", "--listen-cluster", "127.0.0.1:0",
                              "--cluster-secret-file",
                              secret_file("other-rot", os.urandom(32).hex()), *seed)
            joiners.append(stranger)
            wait_for(lambda: '"event":"cluster_link_refused"' in a.log_text(),
                     "a third secret to be refused")
            self.assertEqual(len(live_members(a)), 3, names())
        finally:
            for broker in [a, *joiners]:
                broker.stop()


class DrainTest(unittest.TestCase):
    def test_sigterm_hands_every_mailbox_off_then_exits_zero_with_an_empty_store(self):
        first = start_member("d0")
        brokers = [first, start_member("d1", first), start_member("d2", first)]
        try:
            for broker in brokers:
                wait_for(lambda b=broker: len(live_members(b)) == 3, "three live members")
            nodes = [b.node_id for b in brokers]
            leaving = brokers[0]
            recipients = []
            while len(recipients) < 3:  # offline recipients homed on the broker that leaves
                key = os.path.join(WORK, "drain-%d.key" % time.monotonic_ns())
                peer_id = keygen(key)
                if home_of(peer_id, nodes) == leaving.node_id:
                    recipients.append((key, peer_id))
            sender = os.path.join(WORK, "drain-sender.key")
            keygen(sender)
            for key, peer_id in recipients:
                for i in range(5):
                    self.assertEqual(send(brokers[1], sender, peer_id, "drain %d" % i),
                                     "ACCEPTED")
            wait_for(lambda: metric(leaving, "mesh_messages_queue_size") == 15,
                     "the home to hold 15 messages")
            leaving.stop()  # SIGTERM: drain, then exit 0
            with open(os.path.join(leaving.dir, "data", "DRAINED")) as drained:
                self.assertTrue(json.load(drained)["empty"])
            self.assertIn('"event":"drain_finished"', leaving.log_text())
            # As a removed pod's volume would be: its data goes.
            subprocess.run(["rm", "-rf", os.path.join(leaving.dir, "data")], check=True)
            for key, peer_id in recipients:
                listener = Peer.with_key(brokers[2], key)
                try:
                    got = [listener.next_message()["payload"] for _ in range(5)]
                    self.assertEqual(got, ["drain %d" % i for i in range(5)])
                finally:
                    listener.stop()
        finally:
            for broker in brokers:
                if broker.alive():
                    broker.stop()

    def test_a_drain_hands_off_no_message_the_recipient_acknowledged(self):
        """bob, homed on the broker that leaves, reads 5 messages at another broker and exits;
        the drain that follows must not hand the 5th (acknowledged, its ack still on its way
        back) to his next home, where his next listen would show it again."""
        brokers = start_mesh("r", 3)
        try:
            leaving = brokers[0]
            key, bob_id = key_homed_at(leaving, brokers, "acked")
            alice = os.path.join(WORK, "acked-sender-%d.key" % time.monotonic_ns())
            keygen(alice)
            bob = Peer(brokers[2], None, count=5, key=key)
            wait_for(lambda: node_of(leaving, bob_id) == brokers[2].node_id,
                     "bob's presence at the broker that leaves")
            for i in range(5):
                self.assertEqual(send(leaving, alice, bob_id, "acked %d" % i), "ACCEPTED")
            got = [bob.next_message()["payload"] for _ in range(5)]
            self.assertEqual(got, ["acked %d" % i for i in range(5)])
            bob.stop()  # `--count 5` exits after acknowledging the 5th
            leaving.stop()  # SIGTERM: drain, then exit 0
            with open(os.path.join(leaving.dir, "data", "DRAINED")) as drained:
                self.assertTrue(json.load(drained)["empty"])
            # FIFO per sender: the marker comes first exactly when nothing was handed on.
            self.assertEqual(send(brokers[1], alice, bob_id, "marker"), "ACCEPTED")
            again = Peer.with_key(brokers[1], key)
            try:
                self.assertEqual(again.next_message()["payload"], "marker")
            finally:
                again.stop()
        finally:
            for broker in brokers:
                if broker.alive():
                    broker.stop()

    def test_drain_says_what_it_does_with_what_is_held(self):
        """The Drain answer tells the truth: in a mesh it hands messages to the other members;
        a broker alone keeps them in its data dir."""
        brokers = start_mesh("t", 2)
        alone = Broker("t-alone")
        try:
            sender = os.path.join(WORK, "truth-sender.key")
            keygen(sender)
            _, recipient = key_homed_at(brokers[0], brokers, "truth")
            self.assertEqual(send(brokers[1], sender, recipient, "held"), "ACCEPTED")
            self.assertEqual(send(alone, sender, recipient, "held"), "ACCEPTED")
            wait_for(lambda: metric(brokers[0], "mesh_messages_queue_size") == 1,
                     "the home to hold the message")
            answer = rest(brokers[0], "/api/v1/drain", method="POST")
            self.assertTrue(answer["started"])
            self.assertIn("handing 1 messages to their homes among 1 other members",
                          answer["detail"])
            self.assertNotIn("no other member", answer["detail"])
            again = rest(brokers[0], "/api/v1/drain", method="POST")
            self.assertFalse(again.get("started", False))
            self.assertIn("already under way", again["detail"])
            answer = rest(alone, "/api/v1/drain", method="POST")
            self.assertIn("not in a mesh", answer["detail"])
            self.assertIn("stay in the data dir", answer["detail"])
        finally:
            for broker in brokers + [alone]:
                if broker.alive():
                    broker.stop()


if __name__ == "__main__":
    support.run_tests()
