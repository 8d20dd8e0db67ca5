#!/usr/bin/python3
"""The gRPC control plane, through a client this project's build did not generate: Debian's
python3-grpcio with stubs that protoc makes from proto/ at test time. Every RPC, the token,
bad arguments, not-found, health, reflection and the event stream, against the real mesh-broker
with real peers (mesh-cli). Usage: control_grpc_test.py MESH_BROKER MESH_CLI PROTO_DIR"""
import base64, os, queue, subprocess, sys, threading, time, unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mesh_test_support as support  # noqa: E402
from mesh_test_support import DEADLINE, Peer, offline_id, wait_for  # noqa: E402

BROKER, CLI, PROTO_DIR = sys.argv[1:4]
WORK = support.setup(BROKER, CLI, "mesh-grpc-test-")

# Stubs generated now, from the same .proto files, by Debian's protoc and grpc_python_plugin.
subprocess.run(["protoc", "-I", PROTO_DIR, "--python_out", WORK, "--grpc_python_out", WORK,
                "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                "mesh/v1/control.proto", "mesh/v1/wire.proto"], check=True)
sys.path.insert(0, WORK)
from mesh.v1 import control_pb2 as pb, control_pb2_grpc as pb_grpc, wire_pb2  # noqa: E402


class Broker(support.Broker):
    """The broker, with a gRPC stub that sends the admin token."""

    def __init__(self, name):
        super().__init__(name)
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.ports["grpc"])
        self.stub = pb_grpc.ControlStub(self.channel)
        self.auth = [("authorization", "Bearer " + self.token)]

    def call(self, method, request, **kwargs):
        return getattr(self.stub, method)(request, metadata=self.auth, timeout=DEADLINE, **kwargs)

    def stop(self):
        self.channel.close()
        super().stop()


class ControlTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = Broker("main")

    @classmethod
    def tearDownClass(cls):
        cls.broker.stop()

    def assertCode(self, code, fn):
        with self.assertRaises(grpc.RpcError) as caught:
            fn()
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        self.assertTrue(caught.exception.details())  # a message a person can act on
        return caught.exception

    def test_every_call_but_health_needs_the_token(self):
        stub = self.broker.stub
        self.assertCode(grpc.StatusCode.UNAUTHENTICATED,
                        lambda: stub.GetStats(pb.GetStatsRequest(), timeout=DEADLINE))
        self.assertCode(grpc.StatusCode.UNAUTHENTICATED, lambda: stub.GetStats(
            pb.GetStatsRequest(), metadata=[("authorization", "Bearer wrong")], timeout=DEADLINE))
        events = stub.WatchEvents(pb.WatchEventsRequest(), timeout=DEADLINE)
        self.assertCode(grpc.StatusCode.UNAUTHENTICATED, lambda: next(events))

    def test_health_follows_readiness_without_a_token(self):
        check = self.broker.channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda r: r,
            response_deserializer=lambda r: r)
        # HealthCheckResponse{status: SERVING}: field 1, varint 1.
        self.assertEqual(check(b"", timeout=DEADLINE), b"\x08\x01")

    def test_reflection_lists_the_control_service(self):
        reflect = self.broker.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda r: r, response_deserializer=lambda r: r)
        # ServerReflectionRequest{list_services: ""}: field 7, length 0.
        answer = next(reflect(iter([b"\x3a\x00"]), timeout=DEADLINE))
        self.assertIn(b"mesh.v1.Control", answer)
        self.assertIn(b"grpc.health.v1.Health", answer)

    def test_stats_and_members_describe_this_node(self):
        stats = self.broker.call("GetStats", pb.GetStatsRequest())
        self.assertEqual(len(stats.node_id), 43)
        self.assertTrue(stats.ready)
        self.assertFalse(stats.draining)
        self.assertTrue(stats.store_available)
        self.assertIn("MAILBOX_FULL", stats.rejected)
        members = self.broker.call("ListMembers", pb.ListMembersRequest()).members
        self.assertEqual(len(members), 1)
        self.assertEqual(members[0].node_id, stats.node_id)
        self.assertEqual(members[0].state, pb.Member.ALIVE)
        self.assertTrue(members[0].self)

    def test_bad_arguments_are_invalid_argument(self):
        call = self.broker.call
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: call("GetPeer", pb.GetPeerRequest(id="not-an-id")))
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, lambda: call("GetPeer", pb.GetPeerRequest()))
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: call("ListPeers", pb.ListPeersRequest(page_size=1001)))
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: call("ListPeers", pb.ListPeersRequest(page_token="x")))
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT, lambda: call(
            "SendMessage", pb.SendMessageRequest(to="A" * 43, payload=b"x")))  # not canonical
        self.assertCode(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: call("PurgeMailbox", pb.PurgeMailboxRequest(id="")))

    def test_unknown_peers_are_not_found(self):
        nobody = offline_id()
        self.assertCode(grpc.StatusCode.NOT_FOUND,
                        lambda: self.broker.call("GetPeer", pb.GetPeerRequest(id=nobody)))
        self.assertCode(grpc.StatusCode.NOT_FOUND, lambda: self.broker.call(
            "DisconnectPeer", pb.DisconnectPeerRequest(id=nobody)))

    def test_a_peer_is_listed_sent_to_watched_and_disconnected(self):
        events = self.broker.stub.WatchEvents(pb.WatchEventsRequest(), metadata=self.broker.auth,
                                              timeout=4 * DEADLINE)
        seen = queue.Queue()

        def pump():
            try:
                for event in events:
                    seen.put(event)
            except grpc.RpcError:
                pass

        threading.Thread(target=pump, daemon=True).start()
        # The stream is open once an event reaches it; throwaway peers make them.
        support.open_stream(lambda n: Peer(self.broker, "warmup%d" % n), lambda: not seen.empty(),
                            "the event stream to open")

        alice = Peer(self.broker, "alice")
        # Connected first, then her client grants credit: wait for both.
        peer = wait_for(lambda: (p := self._connected(alice.id)) and p.credit > 0 and p,
                        "alice connected with credit")
        self.assertEqual(peer.remote_address, "127.0.0.1")

        node = self.broker.call("GetStats", pb.GetStatsRequest()).node_id
        sent = self.broker.call("SendMessage", pb.SendMessageRequest(to=alice.id, payload=b"hi"))
        self.assertEqual(sent.status, wire_pb2.SendAck.ACCEPTED)
        message = alice.next_message()
        self.assertEqual(message["from"], node)  # from the broker's own identity
        self.assertEqual(message["payload"], "hi")

        # GoAway{ADMIN}: the link closes (mesh-cli then reconnects, as clients do).
        self.broker.call("DisconnectPeer", pb.DisconnectPeerRequest(id=alice.id))
        kinds = []
        while True:
            event = seen.get(timeout=DEADLINE)
            kind = event.WhichOneof("kind")
            peer_of = getattr(event, kind).peer if kind.startswith("peer_") else None
            if peer_of == alice.id:
                kinds.append(kind)
            if kinds == ["peer_connected", "peer_disconnected"]:
                break
        self.assertGreater(event.at_ms, 0)
        events.cancel()
        alice.stop()

    def _connected(self, peer_id):
        try:
            peer = self.broker.call("GetPeer", pb.GetPeerRequest(id=peer_id))
        except grpc.RpcError:
            return None
        return peer if peer.connected else None

    def test_peers_are_paged_in_id_order(self):
        # In the order of the IDs' bytes (which base64url text does not keep).
        raw = lambda peer_id: base64.urlsafe_b64decode(peer_id + "=")
        peers = [Peer(self.broker, "page%d" % i) for i in range(3)]
        ids = sorted((p.id for p in peers), key=raw)
        for peer_id in ids:
            wait_for(lambda: self._connected(peer_id), "a peer to connect")
        listed, token = [], ""
        while True:
            page = self.broker.call("ListPeers", pb.ListPeersRequest(page_size=1, page_token=token))
            self.assertLessEqual(len(page.peers), 1)
            listed += [p.id for p in page.peers]
            token = page.next_page_token
            if not token:
                break
        self.assertEqual([i for i in listed if i in ids], ids)
        self.assertEqual(listed, sorted(listed, key=raw))
        for peer in peers:
            peer.stop()

    def test_an_offline_mailbox_is_counted_and_purged(self):
        bob = offline_id()
        for text in (b"one", b"two"):
            sent = self.broker.call("SendMessage", pb.SendMessageRequest(to=bob, payload=text))
            self.assertEqual(sent.status, wire_pb2.SendAck.ACCEPTED)
            self.assertEqual(len(sent.id), 22)
        mailbox = self.broker.call("GetMailbox", pb.GetMailboxRequest(id=bob))
        self.assertEqual(mailbox.messages, 2)
        self.assertFalse(mailbox.online)
        self.assertGreater(mailbox.bytes, 0)
        self.assertEqual(self.broker.call("PurgeMailbox", pb.PurgeMailboxRequest(id=bob)).purged, 2)
        self.assertEqual(self.broker.call("GetMailbox", pb.GetMailboxRequest(id=bob)).messages, 0)


class DrainTest(unittest.TestCase):
    def test_drain_turns_readiness_off_and_sends_peers_away(self):
        broker = Broker("drain")
        try:
            carol = Peer(broker, "carol")
            wait_for(lambda: broker.call("GetStats", pb.GetStatsRequest()).peers_connected == 1,
                     "carol to connect")
            first = broker.call("Drain", pb.DrainRequest())
            self.assertTrue(first.started)
            self.assertTrue(first.detail)
            self.assertFalse(broker.call("Drain", pb.DrainRequest()).started)
            stats = broker.call("GetStats", pb.GetStatsRequest())
            self.assertTrue(stats.draining)
            self.assertFalse(stats.ready)
            members = broker.call("ListMembers", pb.ListMembersRequest()).members
            self.assertEqual(members[0].state, pb.Member.DRAINING)
            check = broker.channel.unary_unary(
                "/grpc.health.v1.Health/Check", request_serializer=lambda r: r,
                response_deserializer=lambda r: r)
            # NOT_SERVING (2) once the broker's tick has seen the drain.
            wait_for(lambda: check(b"", timeout=DEADLINE) == b"\x08\x02", "health NOT_SERVING")
            wait_for(lambda: broker.call("GetStats", pb.GetStatsRequest()).peers_connected == 0,
                     "carol to be sent away")
            carol.stop()
        finally:
            broker.stop()


class TlsTest(unittest.TestCase):
    def test_the_control_plane_speaks_tls_when_given_a_certificate(self):
        cert, key = support.self_signed_certificate("tls-files")
        broker = support.Broker("tls", "--tls-cert-file", cert, "--tls-key-file", key)
        try:
            address = "127.0.0.1:%d" % broker.ports["grpc"]
            with open(cert, "rb") as pem:
                credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
            with grpc.secure_channel(address, credentials) as channel:
                stats = pb_grpc.ControlStub(channel).GetStats(
                    pb.GetStatsRequest(), metadata=[("authorization", "Bearer " + broker.token)],
                    timeout=DEADLINE)
                self.assertTrue(stats.ready)
            with grpc.insecure_channel(address) as channel:
                with self.assertRaises(grpc.RpcError) as caught:
                    pb_grpc.ControlStub(channel).GetStats(pb.GetStatsRequest(), timeout=5)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            broker.stop()


if __name__ == "__main__":
    support.run_tests()
