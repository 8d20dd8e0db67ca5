// A peer link over WebSocket (docs/PROTOCOL.md): the preamble, the Noise XX handshake that
// carries both Hellos, then frames as encrypted records, with heartbeats. One WebSocket
// message is one Noise message; the link is the same one a TCP client gets on port 7700.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";

import { toBase64Url } from "./bytes.js";
import { type BrokerTrust, checkBroker } from "./cert.js";
import {
  ErrorCode,
  type Frame,
  FrameSchema,
  type Hello,
  HelloSchema,
} from "./gen/mesh/v1/wire_pb.js";
import { HandshakeState, type KeyPair, NoiseError, type Suite, type TransportCiphers } from "./noise.js";
import { defaultWebSocket, MessageSocket, SocketClosed, type WebSocketConstructor } from "./transport.js";
import {
  encodeFrame,
  encodePreamble,
  FrameAssembler,
  frameRecords,
  kFrameOverhead,
  kMaxHandshakeMessage,
  kMissedHeartbeats,
  kProtocolVersion,
  kWebSocketProtocol,
  packedRecords,
  parseRefusal,
  WireError,
} from "./wire.js";

export interface ConnectOptions {
  url: string; // ws://HOST:PORT/v1/link (or wss://)
  key: KeyPair;
  suite?: Suite; // default ChaChaPoly; a broker that refuses it is retried once with one it speaks
  agent?: string;
  trust?: BrokerTrust;
  timeoutMs?: number; // for the WebSocket and the handshake together (default 10 s)
  WebSocket?: WebSocketConstructor; // default: the global one, else the `ws` package
}

// Why a link could not be made or ended, named as the broker's reasons are (docs/PROTOCOL.md).
export class LinkError extends Error {
  constructor(
    message: string,
    readonly reason: string,
    readonly refusedSuites?: Suite[],
  ) {
    super(message);
    this.name = "LinkError";
  }
}

function linkErrorOf(e: unknown): LinkError {
  if (e instanceof LinkError) return e;
  if (e instanceof NoiseError || e instanceof WireError) return new LinkError(e.message, e.reason);
  if (e instanceof SocketClosed) return new LinkError(e.message, e.code === 1000 ? "closed" : "connection");
  if (e instanceof Error && e.name === "TrustError") return new LinkError(e.message, "untrusted_broker");
  return new LinkError(String((e as Error)?.message ?? e), "internal");
}

export async function connect(options: ConnectOptions): Promise<Link> {
  const WebSocket = options.WebSocket ?? (await defaultWebSocket());
  // ChaChaPoly by default: in JavaScript both ciphers are software, and ChaCha20-Poly1305 is
  // the faster one there (AES-GCM is what the native clients pick on CPUs with AES-NI).
  const suite = options.suite ?? "ChaChaPoly";
  try {
    return await handshake(WebSocket, options, suite);
  } catch (e) {
    const refused = e instanceof LinkError ? e.refusedSuites : undefined;
    const other = refused?.find((s) => s !== suite);
    if (!refused || !other) throw e;
    return await handshake(WebSocket, options, other);
  }
}

async function handshake(WebSocket: WebSocketConstructor, options: ConnectOptions, suite: Suite): Promise<Link> {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  const remaining = () => Math.max(1, deadline - Date.now());
  let socket: MessageSocket | undefined;
  try {
    socket = await MessageSocket.open(WebSocket, options.url, kWebSocketProtocol, remaining());
    const preamble = encodePreamble(suite);
    const noise = new HandshakeState({ suite, initiator: true, prologue: preamble, staticKey: options.key });
    socket.send(preamble);
    socket.send(noise.writeMessage(new Uint8Array(0)));
    const second = await socket.receive(remaining());
    const refusal = parseRefusal(second);
    if (refusal) {
      throw new LinkError(`the broker refused the preamble (${refusal.reason})`, `unsupported_${refusal.reason}`,
        refusal.reason === "suite" ? refusal.suites : undefined);
    }
    if (second.length > kMaxHandshakeMessage) {
      throw new LinkError(`handshake message of ${second.length} bytes`, "handshake_too_large");
    }
    let brokerHello: Hello;
    try {
      brokerHello = fromBinary(HelloSchema, noise.readMessage(second));
    } catch (e) {
      if (e instanceof NoiseError) throw e;
      throw new LinkError("the broker's Hello is not a mesh.v1.Hello", "handshake_failed");
    }
    const brokerId = noise.remoteStatic!;
    // Checked before message 3 carries our key to a broker we do not trust.
    if (options.trust) checkBroker(options.trust, brokerId, brokerHello.nodeCert);
    const hello = create(HelloSchema, {
      protocolVersion: kProtocolVersion,
      agent: options.agent ?? "mesh-web/0.1",
      packedRecords: true, // run() reads them
    });
    socket.send(noise.writeMessage(toBinary(HelloSchema, hello)));
    return new Link(socket, noise.split(), suite, brokerId, brokerHello);
  } catch (e) {
    socket?.close(1002, "handshake failed");
    throw linkErrorOf(e);
  }
}

export class Link {
  readonly maxPayload: number;
  private readonly heartbeatMs: number;
  private readonly assembler: FrameAssembler;
  private lastSent = Date.now();
  private lastReceived = Date.now();
  private ended: LinkError | undefined;
  private queued: Uint8Array[] = [];

  constructor(
    private readonly socket: MessageSocket,
    private readonly ciphers: TransportCiphers,
    readonly suite: Suite,
    readonly brokerId: Uint8Array,
    readonly brokerHello: Hello,
  ) {
    const limits = brokerHello.limits;
    this.maxPayload = Number(limits?.maxPayload || 1n << 20n);
    this.heartbeatMs = limits?.heartbeatIntervalMs || 15_000;
    this.assembler = new FrameAssembler(this.maxPayload + kFrameOverhead);
  }

  get brokerIdText(): string {
    return toBase64Url(this.brokerId);
  }

  get closed(): boolean {
    return this.ended !== undefined || this.socket.closed;
  }

  // Bytes queued on the socket and not yet sent: a sender may wait while it is large.
  get buffered(): number {
    return this.socket.buffered;
  }

  // Queues a frame; the frames queued in one turn of the event loop go out together, packed
  // into few records when the broker reads packed records (one WebSocket message for many).
  send(frame: Frame): void {
    this.sendEncoded(encodeFrame(frame));
  }

  // A frame already encoded (a pending Send, resent as it was).
  sendEncoded(serialized: Uint8Array): void {
    if (this.closed) return;
    this.queued.push(serialized);
    if (this.queued.length === 1) queueMicrotask(() => this.flush());
  }

  private flush(): void {
    const frames = this.queued;
    this.queued = [];
    if (this.closed || frames.length === 0) return;
    const records = this.brokerHello.packedRecords ? packedRecords(frames) : frames.flatMap(frameRecords);
    for (const record of records) this.socket.send(this.ciphers.send.encryptWithAd(new Uint8Array(0), record));
    this.lastSent = Date.now();
  }

  // Reads frames into `onFrame` until the link ends, then resolves with why it ended. A Ping
  // goes out when nothing was sent for a heartbeat interval; silence for three ends the link.
  async run(onFrame: (frame: Frame) => void): Promise<LinkError> {
    const heartbeat = setInterval(() => this.beat(), Math.max(10, this.heartbeatMs / 4));
    try {
      for (;;) {
        const record = await this.socket.receive();
        this.lastReceived = Date.now();
        const frames = this.assembler.push(this.ciphers.receive.decryptWithAd(new Uint8Array(0), record));
        for (const frame of frames) {
          if (this.ended) break;
          if (frame.body.case === "ping") {
            this.send(create(FrameSchema, { body: { case: "pong", value: { nonce: frame.body.value.nonce } } }));
          } else if (frame.body.case === "error") {
            const code = (ErrorCode[frame.body.value.code] ?? String(frame.body.value.code)).toLowerCase();
            this.end(new LinkError(`the broker closed the link: ${code} ${frame.body.value.message}`, code), 1000);
          } else {
            onFrame(frame);
          }
        }
      }
    } catch (e) {
      const error = linkErrorOf(e);
      if (error.reason !== "connection" && error.reason !== "closed") this.fail(error);
      this.end(error, 1000);
    } finally {
      clearInterval(heartbeat);
    }
    return this.ended!;
  }

  close(): void {
    this.end(new LinkError("closed by the client", "closed"), 1000);
  }

  private beat(): void {
    const now = Date.now();
    if (now - this.lastReceived > kMissedHeartbeats * this.heartbeatMs) {
      this.fail(new LinkError(`nothing from the broker for ${kMissedHeartbeats} heartbeat intervals`, "heartbeat_timeout"));
      return;
    }
    if (now - this.lastSent >= this.heartbeatMs) {
      this.send(create(FrameSchema, { body: { case: "ping", value: { nonce: BigInt(now) } } }));
    }
  }

  // A protocol violation by the broker: an Error frame, then the close.
  private fail(error: LinkError): void {
    if (this.closed) return;
    const code = ErrorCode[error.reason.toUpperCase() as keyof typeof ErrorCode] ?? ErrorCode.INTERNAL;
    this.send(create(FrameSchema, { body: { case: "error", value: { code, message: error.message } } }));
    this.end(error, 1002);
  }

  private end(error: LinkError, code: number): void {
    if (this.ended) return;
    this.flush(); // what was queued (acks, an Error frame) goes out before the close
    this.ended = error;
    this.socket.close(code, error.reason.slice(0, 100));
  }
}
