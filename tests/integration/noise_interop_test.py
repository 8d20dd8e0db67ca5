#!/usr/bin/python3
"""Interop: an independent Noise implementation (python3-dissononce) completes the XX handshake
with the running mesh-broker binary over both suites, proves the broker's node key, and gets a
Pong for a Ping sent through the record layer. Usage: noise_interop_test.py PATH/TO/mesh-broker"""
import base64, os, re, signal, socket, subprocess, sys, tempfile, time

from dissononce.cipher.aesgcm import AESGCMCipher
from dissononce.cipher.chachapoly import ChaChaPolyCipher
from dissononce.dh.x25519.private import PrivateKey
from dissononce.dh.x25519.x25519 import X25519DH
from dissononce.hash.sha256 import SHA256Hash
from dissononce.processing.handshakepatterns.interactive.XX import XXHandshakePattern
from dissononce.processing.impl.cipherstate import CipherState
from dissononce.processing.impl.handshakestate import HandshakeState
from dissononce.processing.impl.symmetricstate import SymmetricState

DEADLINE = 15.0
PING_42 = bytes([0x32, 0x02, 0x08, 0x2A])  # Frame{ping{nonce: 42}}
PONG_42 = bytes([0x3A, 0x02, 0x08, 0x2A])  # Frame{pong{nonce: 42}}


def read_exactly(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("broker closed the connection")
        out += chunk
    return out


def read_message(sock):
    length = int.from_bytes(read_exactly(sock, 2), "big")
    return read_exactly(sock, length)


def send_message(sock, message):
    sock.sendall(len(message).to_bytes(2, "big") + bytes(message))


def check_suite(port, suite_id, cipher, node_public):
    dh = X25519DH()
    hs = HandshakeState(SymmetricState(CipherState(cipher), SHA256Hash()), dh)
    preamble = b"MESH" + bytes([1, suite_id, 0, 0])
    hs.initialize(XXHandshakePattern(), True, preamble, s=dh.generate_keypair())
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        message = bytearray()
        hs.write_message(b"", message)
        sock.sendall(preamble)
        send_message(sock, message)
        payload = bytearray()
        hs.read_message(read_message(sock), payload)  # message 2: the broker's Hello
        assert bytes(hs.rs.data) == node_public, "broker did not prove its node key"
        message = bytearray()
        hello = bytes([0x2A, 0x07]) + b"interop"  # Hello{agent: "interop"}
        send_cs, receive_cs = hs.write_message(hello, message)
        send_message(sock, message)
        send_message(sock, send_cs.encrypt_with_ad(b"", b"\x01" + PING_42))
        while True:  # skip the broker's own Pings, if any
            record = receive_cs.decrypt_with_ad(b"", read_message(sock))
            assert record[0] == 1, "expected a single-record frame"
            if not record[1:].startswith(b"\x32"):  # field 6, a Ping
                break
        assert record[1:] == PONG_42, "expected Pong{42}, got %r" % record[1:]


def main():
    broker = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "broker.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([broker, "--data-dir", os.path.join(tmp, "data"),
                                     "--listen-peer", "127.0.0.1:0", "--listen-grpc", "127.0.0.1:0",
                                     "--listen-http", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0"], stderr=log,
                                    stdout=subprocess.DEVNULL)
        try:
            port = None
            end = time.time() + DEADLINE
            while port is None and time.time() < end and proc.poll() is None:
                m = re.search(r'"event":"listening","listener":"peer".*"port":(\d+)', open(log_path).read())
                port = int(m.group(1)) if m else time.sleep(0.01)
            assert port, "broker did not start: " + open(log_path).read()
            key_line = [l for l in open(os.path.join(tmp, "data", "node.key")) if not l.startswith("#")][0]
            private = base64.urlsafe_b64decode(key_line.strip() + "=")
            node_public = bytes(X25519DH().generate_keypair(PrivateKey(private)).public.data)
            check_suite(port, 1, AESGCMCipher(), node_public)
            check_suite(port, 2, ChaChaPolyCipher(), node_public)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=DEADLINE) == 0, "broker did not exit 0"
        finally:
            if proc.poll() is None:
                proc.kill()
    print("interop: dissononce completed XX over AESGCM and ChaChaPoly and got Pong")


if __name__ == "__main__":
    main()
