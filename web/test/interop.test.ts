// The TypeScript client in Node against the real broker and the real C++ client: sealed mail
// both ways over WebSocket and TCP, an offline mailbox delivered after a restart, one key's WS
// and TCP links replacing each other, and every bad input on 7780 refused while the broker keeps
// serving (refusals seen through the `ws` package, a WebSocket implementation not ours).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { WebSocket } from "ws";

import { connect, formatKeyFile, generateKeyPair, type Message, parseAuthorityKey, parsePeerId, type PendingStore, peerIdText, Session, type SessionOptions, type StoredSend, toBase64Url, utf8 } from "../src/index.js";
import type { WebSocketConstructor } from "../src/transport.js";
import { Broker, cleanup, cli, cliPeerId, CliListener, kDeadlineMs, tempDir, waitFor } from "./support.js";

const dir = tempDir("mesh-web-interop-");
const broker = new Broker(dir, ["--ws-allowed-origins", "http://allowed.example"]);
const sessions: Session[] = [];

before(() => broker.start());
after(async () => {
  for (const session of sessions) session.close();
  await broker.stop();
  cleanup(dir);
});

// The browser sends an Origin; Node's ws sends none unless asked. These links say the allowed one.
function wsWithOrigin(origin: string): WebSocketConstructor {
  return class extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols, { origin });
    }
  } as unknown as WebSocketConstructor;
}
const kAllowed = wsWithOrigin("http://allowed.example");

function session(options: Partial<SessionOptions> & { key: SessionOptions["key"] }): { session: Session; inbox: Message[] } {
  const s = new Session({ brokers: [broker.wsUrl], WebSocket: kAllowed, ...options });
  const inbox: Message[] = [];
  s.onMessage((m) => {
    inbox.push(m);
  });
  sessions.push(s);
  s.start();
  return { session: s, inbox };
}

function cliKey(name: string): { path: string; id: string } {
  const path = join(dir, `${name}.key`);
  cli(["keygen", "--out", path]);
  return { path, id: cliPeerId(path) };
}

test("sealed both ways between the TS client (WebSocket) and mesh-cli (TCP)", async () => {
  const cpp = cliKey("cpp");
  const listener = new CliListener(broker.peerAddress, cpp.path, ["--seal"]);
  const key = generateKeyPair();
  const { session: ts, inbox } = session({ key, seal: true });
  await waitFor("the TS session to connect", () => ts.connected);

  const sent = await ts.send(parsePeerId(cpp.id), "from TypeScript, sealed");
  assert.equal(sent.statusName, "ACCEPTED", sent.detail);
  const line = await listener.next();
  assert.equal(line.payload, "from TypeScript, sealed");
  assert.equal(line.from, peerIdText(key.publicKey));
  assert.equal(line.sealed_error, undefined);
  listener.stop();

  cli(["send", "--broker", broker.peerAddress, "--key", cpp.path, "--seal", "--to", peerIdText(key.publicKey), "from C++, sealed"]);
  const message = await waitFor("the sealed message at the TS session", () => inbox.shift());
  assert.equal(message.sealError, undefined);
  assert.equal(new TextDecoder().decode(message.payload), "from C++, sealed");
  assert.equal(message.fromText, cpp.id);
});

test("mesh-cli over ws:// reaches a TS peer", async () => {
  const cpp = cliKey("cpp-ws");
  const key = generateKeyPair();
  const { session: ts, inbox } = session({ key, seal: true });
  await waitFor("the TS session to connect", () => ts.connected);
  // The C++ client sends no Origin: the broker's origin rule is for browsers, which always do.
  cli(["send", "--broker", broker.wsUrl, "--key", cpp.path, "--seal", "--to", peerIdText(key.publicKey), "over ws"]);
  const message = await waitFor("the message sent over ws://", () => inbox.shift());
  assert.equal(new TextDecoder().decode(message.payload), "over ws");
  assert.equal(message.fromText, cpp.id);
});

test("a message is acked only once its handler has returned: a failed async handler gets it again", async () => {
  const cpp = cliKey("cpp-ack");
  const key = generateKeyPair();
  const first = new Session({ brokers: [broker.wsUrl], WebSocket: kAllowed, key });
  sessions.push(first);
  let calls = 0;
  first.onMessage(async () => {
    calls++;
    await new Promise((resolve) => setTimeout(resolve, 20));
    throw new Error("the application failed");
  });
  first.start();
  await waitFor("the first session to connect", () => first.connected);
  cli(["send", "--broker", broker.peerAddress, "--key", cpp.path, "--to", peerIdText(key.publicKey), "again"]);
  await waitFor("the failing handler to run", () => calls === 1);
  first.close();
  const { inbox } = session({ key });
  const message = await waitFor("the message again, on the next link", () => inbox.shift());
  assert.equal(new TextDecoder().decode(message.payload), "again");
});

test("mail to an offline TS peer survives a broker restart and arrives when it comes back", async () => {
  const cpp = cliKey("cpp-offline");
  const key = generateKeyPair();
  for (let i = 0; i < 3; i++) {
    cli(["send", "--broker", broker.peerAddress, "--key", cpp.path, "--seal", "--to", peerIdText(key.publicKey), `offline ${i}`]);
  }
  await broker.stop();
  await broker.start();
  const { inbox } = session({ key, seal: true, brokers: [broker.wsUrl] });
  const got = await waitFor("three offline messages", () => (inbox.length >= 3 ? inbox.slice() : undefined));
  assert.deepEqual(got.map((m) => new TextDecoder().decode(m.payload)), ["offline 0", "offline 1", "offline 2"]);
});

test("sends the broker never acknowledged are resent from the pending store after a restart, with their ids", async () => {
  const recipient = generateKeyPair();
  const sender = generateKeyPair();
  let stored: StoredSend[] = [];
  const store: PendingStore = { load: () => stored, save: (sends) => (stored = sends) };
  // No broker at this address: the sends stay pending, and the store holds them.
  const first = new Session({ brokers: ["ws://127.0.0.1:1/v1/link"], key: sender, pendingStore: store });
  first.start();
  const results = [first.send(recipient.publicKey, "kept 0"), first.send(recipient.publicKey, "kept 1")];
  await waitFor("two stored sends", () => stored.length === 2);
  first.close(); // as a page that is closed: its store keeps the sends
  assert.deepEqual((await Promise.all(results)).map((r) => r.statusName), ["STATUS_UNSPECIFIED", "STATUS_UNSPECIFIED"]);
  assert.equal(stored.length, 2);
  const storedIds = stored.map((send) => send.id);

  const second = new Session({ brokers: [broker.wsUrl], WebSocket: kAllowed, key: sender, pendingStore: store });
  sessions.push(second);
  const restored: string[] = [];
  second.onRestoredSend((result) => restored.push(result.statusName));
  second.start();
  await waitFor("both restored sends acknowledged", () => restored.length === 2);
  assert.deepEqual(restored, ["ACCEPTED", "ACCEPTED"]);
  await waitFor("the store emptied", () => stored.length === 0);
  const { inbox } = session({ key: recipient });
  const got = await waitFor("both messages", () => (inbox.length >= 2 ? inbox.slice() : undefined));
  assert.deepEqual(got.map((m) => new TextDecoder().decode(m.payload)), ["kept 0", "kept 1"]);
  assert.deepEqual(got.map((m) => toBase64Url(m.id)), storedIds, "sent again with the ids they were stored with");
});

test("a TS session and mesh-cli with one key replace each other (WS and TCP)", async () => {
  const key = generateKeyPair();
  const path = join(dir, "shared.key");
  writeFileSync(path, formatKeyFile(key), { mode: 0o600 });
  assert.equal(cliPeerId(path), peerIdText(key.publicKey)); // mesh-cli reads the key file we wrote
  const states: string[] = [];
  const { session: ts } = session({ key, stopWhenReplaced: true });
  ts.onState((connected, why) => states.push(connected ? "up" : why!.reason));
  await waitFor("the TS session to connect", () => ts.connected);
  const listener = new CliListener(broker.peerAddress, path);
  await waitFor("the TS session to be replaced", () => states.includes("replaced"));
  listener.stop();
});

// A raw WebSocket to the broker: the close code it ends with (or "error" when never opened).
function closeCode(protocols: string | undefined, origin: string | undefined, act: (ws: WebSocket) => void): Promise<number | "error"> {
  return new Promise((resolve) => {
    const ws = new WebSocket(broker.wsUrl, protocols, origin ? { origin } : {});
    const timer = setTimeout(() => resolve("error"), kDeadlineMs);
    ws.on("open", () => act(ws));
    ws.on("close", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    ws.on("error", () => {
      clearTimeout(timer);
      resolve("error");
    });
  });
}

test("every bad input on the WebSocket port gets its refusal, and the broker keeps serving", async () => {
  const preamble = Uint8Array.of(0x4d, 0x45, 0x53, 0x48, 1, 1, 0, 0);
  assert.equal(await closeCode(undefined, "http://allowed.example", () => {}), 1008, "no subprotocol");
  assert.equal(await closeCode("mesh.v1", "http://elsewhere.example", () => {}), 1008, "an Origin not allowed");
  assert.equal(await closeCode("mesh.v1", "http://allowed.example", (ws) => ws.send("MESH text")), 1002, "a text message");
  assert.equal(await closeCode("mesh.v1", "http://allowed.example", (ws) => ws.send(utf8("GET / HT"))), 1002, "a garbage preamble");
  assert.equal(await closeCode("mesh.v1", "http://allowed.example", (ws) => {
    ws.send(preamble);
    ws.send(new Uint8Array(65536));
  }), 1009, "a message over 65535 bytes");
  assert.equal(await closeCode("mesh.v1", "http://allowed.example", (ws) => {
    ws.send(preamble);
    ws.send(new Uint8Array(31)); // a truncated handshake message 1
  }), 1002, "a truncated handshake");
  // A link still comes up, and the broker is still the one process.
  const link = await connect({ url: broker.wsUrl, key: generateKeyPair(), WebSocket: kAllowed });
  assert.equal(link.brokerIdText.length, 43);
  link.close();
  assert.ok(broker.alive());
});

test("a broker not among the pinned keys is refused before the client's key is sent", async () => {
  await assert.rejects(
    connect({ url: broker.wsUrl, key: generateKeyPair(), WebSocket: kAllowed, trust: { pinned: [generateKeyPair().publicKey] } }),
    (e: Error & { reason?: string }) => e.reason === "untrusted_broker" && /not one of the pinned broker keys/.test(e.message),
  );
  const link = await connect({ url: broker.wsUrl, key: generateKeyPair(), WebSocket: kAllowed });
  const pinned = await connect({ url: broker.wsUrl, key: generateKeyPair(), WebSocket: kAllowed, trust: { pinned: [link.brokerId] } });
  assert.equal(pinned.brokerIdText, link.brokerIdText);
  link.close();
  pinned.close();
});

test("a node certificate issued by mesh-cli certify is verified, and another authority refused", async () => {
  const certDir = tempDir("mesh-web-cert-");
  const certified = new Broker(certDir);
  await certified.start(); // creates its node key
  await certified.stop();
  const authorityKey = join(certDir, "authority.key");
  cli(["authority-keygen", "--out", authorityKey]);
  const authority = /public key ([A-Za-z0-9_-]{43})/.exec(readFileSync(authorityKey, "utf8"))![1];
  cli(["certify", "--authority-key", authorityKey, "--node", join(certDir, "data", "node.key"), "--out", join(certDir, "node.cert")]);
  const withCert = new Broker(certDir, ["--mesh-authority", authority, "--node-cert-file", join(certDir, "node.cert")]);
  await withCert.start();
  try {
    const link = await connect({ url: withCert.wsUrl, key: generateKeyPair(), trust: { authority: parseAuthorityKey(authority) } });
    link.close();
    await assert.rejects(
      connect({ url: withCert.wsUrl, key: generateKeyPair(), trust: { authority: parseAuthorityKey(peerIdText(generateKeyPair().publicKey)) } }),
      (e: Error & { reason?: string }) => e.reason === "untrusted_broker" && /signed by authority/.test(e.message),
    );
    // The first broker has no certificate at all.
    await assert.rejects(
      connect({ url: broker.wsUrl, key: generateKeyPair(), WebSocket: kAllowed, trust: { authority: parseAuthorityKey(authority) } }),
      (e: Error) => /sent no node certificate/.test(e.message),
    );
  } finally {
    await withCert.stop();
    cleanup(certDir);
  }
});

test("wss: the TS client and mesh-cli over TLS on 7780, the certificate checked", async () => {
  const tlsDir = tempDir("mesh-web-wss-");
  const cert = join(tlsDir, "cert.pem");
  const certKey = join(tlsDir, "key.pem");
  // A self-signed certificate for 127.0.0.1 from Debian's openssl.
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mesh-test",
    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", certKey, "-out", cert], { stdio: "ignore" });
  const secure = new Broker(tlsDir, ["--tls-cert-file", cert, "--tls-key-file", certKey]);
  await secure.start();
  const sessionsHere: Session[] = [];
  try {
    const url = `wss://127.0.0.1:${secure.ports.ws}/v1/link`;
    // Node's own trust anchors do not include the test's certificate: no link.
    await assert.rejects(connect({ url, key: generateKeyPair(), WebSocket: WebSocket as unknown as WebSocketConstructor, timeoutMs: 5000 }));
    const trusting = class extends WebSocket {
      constructor(address: string, protocols?: string | string[]) {
        super(address, protocols, { ca: readFileSync(cert) });
      }
    } as unknown as WebSocketConstructor;
    const key = generateKeyPair();
    const ts = new Session({ brokers: [url], WebSocket: trusting, key, seal: true });
    sessionsHere.push(ts);
    const inbox: Message[] = [];
    ts.onMessage((m) => {
      inbox.push(m);
    });
    ts.start();
    await waitFor("the TS session to connect over wss", () => ts.connected);

    const cpp = cliKey("cpp-wss");
    const tls = ["--tls-ca-file", cert];
    cli(["send", "--broker", url, ...tls, "--key", cpp.path, "--seal", "--to", peerIdText(key.publicKey), "from C++ over wss"]);
    const message = await waitFor("the message at the TS session", () => inbox.shift());
    assert.equal(message.sealError, undefined);
    assert.equal(new TextDecoder().decode(message.payload), "from C++ over wss");

    const listener = new CliListener(url, cpp.path, ["--seal", ...tls]);
    try {
      const sent = await ts.send(parsePeerId(cpp.id), "from TypeScript over wss");
      assert.equal(sent.statusName, "ACCEPTED", sent.detail);
      const line = await listener.next();
      assert.equal(line.payload, "from TypeScript over wss");
    } finally {
      listener.stop();
    }
  } finally {
    for (const s of sessionsHere) s.close();
    await secure.stop();
    cleanup(tlsDir);
  }
});
