"""What the control-plane tests share: a real mesh-broker on ephemeral ports with its own data
dir, real peers (mesh-cli listen), and waiting on conditions with a deadline."""
import json, os, queue, re, shutil, subprocess, sys, tempfile, threading, time, unittest

DEADLINE = 15.0
_BROKER = _CLI = _WORK = None


def setup(broker, cli, prefix):
    """Names the binaries; returns the scratch dir every broker and key goes into."""
    global _BROKER, _CLI, _WORK
    _BROKER, _CLI, _WORK = broker, cli, tempfile.mkdtemp(prefix=prefix)
    return _WORK


def wait_for(predicate, what):
    end = time.time() + DEADLINE
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


class Broker:
    """mesh-broker with peer, gRPC and HTTP listeners on ephemeral loopback ports."""

    def __init__(self, name, *args):
        self.dir = os.path.join(_WORK, name)
        os.makedirs(self.dir)
        self.log_path = os.path.join(self.dir, "broker.log")
        self.log = open(self.log_path, "w")
        listen = [] if "--listen-peer" in args else ["--listen-peer", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [_BROKER, "--data-dir", os.path.join(self.dir, "data"), *listen,
             "--listen-grpc", "127.0.0.1:0", "--listen-http", "127.0.0.1:0",
             "--listen-ws", "127.0.0.1:0",
             "--log-level", "debug", *args],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.ports = wait_for(self._ports, "the broker to listen")
        self.peer_address = "127.0.0.1:%d" % self.ports["peer"]
        with open(os.path.join(self.dir, "data", "admin.token")) as token:
            self.token = token.read().strip()

    def _ports(self):
        text = self.log_text()
        if self.proc.poll() is not None:
            raise AssertionError("the broker exited: " + text)
        found = {}
        for line in text.splitlines():
            event = json.loads(line)
            if event.get("event") == "listening":
                found[event["listener"]] = event["port"]
                if event["listener"] == "peer":
                    self.node_id = event["node_id"]
        return found if {"peer", "grpc", "http"} <= found.keys() else None

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        with open(self.log_path) as log:
            return log.read()

    def stop(self):
        """SIGTERM: the broker must exit 0 (a sanitizer report or a crash would not)."""
        self.proc.terminate()
        code = self.proc.wait(timeout=DEADLINE)
        self.log.close()
        if code != 0:
            raise AssertionError("mesh-broker exited %d on SIGTERM: %s" % (code, self.log_text()[-4000:]))


def keygen(path):
    out = subprocess.run([_CLI, "keygen", "--out", path], check=True, capture_output=True,
                         text=True).stdout
    return re.search(r"[A-Za-z0-9_-]{43}", out).group(0)


def peer_id(path):
    out = subprocess.run([_CLI, "id", "--key", path], check=True, capture_output=True,
                         text=True).stdout
    return re.search(r"[A-Za-z0-9_-]{43}", out).group(0)


class Peer:
    """A real peer: mesh-cli listen with its own key, printing each message as a JSON line."""

    def __init__(self, broker, name, count=0, key=None):
        self.key = key or os.path.join(broker.dir, name + ".key")
        self.id = peer_id(self.key) if key else keygen(self.key)
        args = [_CLI, "listen", "--broker", broker.peer_address, "--key", self.key]
        if count:
            args += ["--count", str(count)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def with_key(cls, broker, key):
        """A listener for a key made earlier."""
        return cls(broker, None, key=key)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next_message(self):
        return self.lines.get(timeout=DEADLINE)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=DEADLINE)
        self.proc.stdout.close()


def offline_id():
    """A peer ID with no session anywhere."""
    return keygen(os.path.join(_WORK, "offline-%d.key" % time.monotonic_ns()))


def run_tests():
    """unittest's main over the calling module, then the scratch dir goes."""
    try:
        unittest.main(module="__main__", argv=[sys.argv[0]], verbosity=2)
    finally:
        shutil.rmtree(_WORK, ignore_errors=True)


def open_stream(make_event, has_event, what):
    """Until a subscription sees events: `make_event(n)` makes one (a throwaway peer), and
    `has_event()` says whether any arrived. A subscription may still be starting when the
    first one happens, so this keeps making them (one every half second) until one shows."""
    end = time.time() + DEADLINE
    n = 0
    while time.time() < end:
        made = make_event(n)
        n += 1
        settle = time.time() + 0.5
        while time.time() < settle:
            if has_event():
                made.stop()
                return
            time.sleep(0.02)
        made.stop()
    raise AssertionError("timed out waiting for " + what)


def self_signed_certificate(name):
    """(cert, key) PEM paths of a fresh self-signed certificate for 127.0.0.1 (openssl)."""
    tls = os.path.join(_WORK, name)
    os.makedirs(tls)
    cert, key = os.path.join(tls, "cert.pem"), os.path.join(tls, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key
