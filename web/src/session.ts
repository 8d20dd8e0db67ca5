// A long-lived session with a broker, as the C++ client's (client/session.h): it reconnects
// with backoff, keeps unacknowledged sends in a pending queue and retries them with the same id
// after a reconnect, hands each received message to the application once (dedup by (from, id)
// for the dedup window) and acknowledges it only after the handler has returned.
import { create, fromBinary } from "@bufbuild/protobuf";
import { randomBytes } from "@noble/hashes/utils";

import { concat, fromBase64Url, toBase64Url, toHex, utf8 } from "./bytes.js";
import type { BrokerTrust } from "./cert.js";
import {
  type Deliver,
  type Frame,
  FrameSchema,
  GoAway_Reason,
  SendAck_Status,
} from "./gen/mesh/v1/wire_pb.js";
import { connect, type Link, LinkError } from "./link.js";
import type { KeyPair, Suite } from "./noise.js";
import { openSealed, sealPayload } from "./seal.js";
import { encodeFrame } from "./wire.js";
import type { WebSocketConstructor } from "./transport.js";

export { SendAck_Status as SendStatus };

// The longest wait a broker's GoAway can ask for: one broken broker must not park its clients.
export const kMaxGoAwayRetryMs = 60_000;

// Where the received (from, id) pairs are kept across restarts (a page reload): localStorage in
// a browser, a file in Node. Entries are [key, expiry as Unix ms].
export interface DedupStore {
  load(): [string, number][];
  save(entries: [string, number][]): void;
}

// Where unacknowledged sends are kept across restarts (a page reload), so they are sent again
// with their ids and the broker stores each once. Entries are the Send frames as sent.
export interface StoredSend {
  id: string; // base64url
  frame: string; // the encoded Send frame, base64url
  queuedAt: number; // Unix ms
}
export interface PendingStore {
  load(): StoredSend[];
  save(sends: StoredSend[]): void;
}

export interface SessionOptions {
  brokers: string[]; // ws:// or wss:// URLs, tried in turn
  key: KeyPair;
  suite?: Suite;
  agent?: string;
  trust?: BrokerTrust; // a broker that fails it counts as unreachable
  WebSocket?: WebSocketConstructor;
  connectTimeoutMs?: number; // 10 s
  backoffMinMs?: number; // 100 ms
  backoffMaxMs?: number; // 5 s
  credit?: number; // deliveries in flight at once (256)
  giveUpAfterMs?: number; // a send not acknowledged within this fails (the dedup window, 10 min)
  dedupWindowMs?: number; // received (from, id) pairs are remembered this long (10 min)
  dedupStore?: DedupStore;
  pendingStore?: PendingStore;
  seal?: boolean; // seal payloads to the recipient and open sealed deliveries
  // A GoAway{REPLACED}: a newer session with this key exists. The session comes back after
  // replacedRetryMs unless stopWhenReplaced (one key on several devices at once).
  stopWhenReplaced?: boolean;
  replacedRetryMs?: number; // 1 s
}

export interface Message {
  from: Uint8Array;
  fromText: string; // the sender's peer ID
  id: Uint8Array;
  payload: Uint8Array; // opened, when the session seals
  sentAtMs: number;
  sealError?: string; // with seal: why the payload could not be opened (payload is as sent)
}

export interface SendResult {
  id: Uint8Array;
  status: SendAck_Status;
  statusName: string;
  detail: string;
  ok: boolean; // ACCEPTED or DUPLICATE: the broker owns the message
}

export interface SessionStats {
  connects: number;
  sends: number;
  resent: number;
  received: number;
  duplicatesDropped: number;
}

interface PendingSend {
  id: Uint8Array;
  encoded: Uint8Array; // the Send frame, encoded once: resends and the pending store reuse it
  queuedAt: number;
  done: (result: SendResult) => void;
}

// Runs `write` once at the end of this turn of the event loop however often it is asked for:
// the stores are written once per turn, not per message.
function oncePerTurn(write: () => void): () => void {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => {
      scheduled = false;
      write();
    }, 0);
  };
}

type MessageHandler = (message: Message) => void | Promise<void>;
// connected, and (when not) why the last link ended or the last dial failed.
type StateHandler = (connected: boolean, why?: LinkError) => void;

export class Session {
  readonly stats: SessionStats = { connects: 0, sends: 0, resent: 0, received: 0, duplicatesDropped: 0 };
  private readonly options: Required<Omit<SessionOptions, "suite" | "trust" | "WebSocket" | "dedupStore" | "pendingStore">> & SessionOptions;
  private link: Link | undefined;
  private closed = false;
  private started = false;
  private maxPayload = 1 << 20;
  private readonly pending = new Map<string, PendingSend>(); // in send order
  private readonly seen = new Map<string, number>(); // dedup key -> expiry (Unix ms)
  private readonly idPrefix = randomBytes(8);
  private idCounter = 0n;
  private busy: Promise<void> | undefined; // an async message handler is running
  private backlog: [Link, Deliver][] = [];
  private readonly saveDedup = oncePerTurn(() => this.options.dedupStore?.save([...this.seen]));
  // Once closed, the store keeps what close() wrote for the next session.
  private readonly savePending = oncePerTurn(() => {
    if (!this.closed) this.options.pendingStore?.save(this.storedSends());
  });
  private onRestoredHandler: (result: SendResult) => void = () => {};
  private acks: bigint[] = [];
  private retryHintMs = 0;
  private replaced = false;
  private wake: (() => void) | undefined;
  private giveUpTimer: ReturnType<typeof setInterval> | undefined;
  private onMessageHandler: MessageHandler = () => {};
  private onStateHandler: StateHandler = () => {};

  constructor(options: SessionOptions) {
    if (options.brokers.length === 0) throw new Error("no broker address given");
    this.options = {
      agent: "mesh-web/0.1",
      connectTimeoutMs: 10_000,
      backoffMinMs: 100,
      backoffMaxMs: 5_000,
      credit: 256,
      giveUpAfterMs: 600_000,
      dedupWindowMs: 600_000,
      seal: false,
      stopWhenReplaced: false,
      replacedRetryMs: 1_000,
      ...options,
    };
    const now = Date.now();
    for (const [key, expires] of options.dedupStore?.load() ?? []) {
      if (expires > now) this.seen.set(key, expires);
    }
    for (const stored of options.pendingStore?.load() ?? []) {
      try {
        const encoded = fromBase64Url(stored.frame);
        const frame = fromBinary(FrameSchema, encoded);
        if (frame.body.case !== "send") continue;
        const id = frame.body.value.id;
        this.pending.set(toHex(id), { id, encoded, queuedAt: stored.queuedAt, done: (r) => this.onRestoredHandler(r) });
      } catch {
        // an entry this version cannot read: dropped
      }
    }
  }

  // The results of sends restored from the pending store (made before a restart).
  onRestoredSend(handler: (result: SendResult) => void): void {
    this.onRestoredHandler = handler;
  }

  // This session's peer ID: its static public key.
  get publicKey(): Uint8Array {
    return this.options.key.publicKey;
  }

  get peerId(): string {
    return toBase64Url(this.options.key.publicKey);
  }

  get connected(): boolean {
    return this.link !== undefined && !this.link.closed;
  }

  // Sends waiting for the broker's SendAck.
  get pendingCount(): number {
    return this.pending.size;
  }

  onMessage(handler: MessageHandler): void {
    this.onMessageHandler = handler;
  }

  onState(handler: StateHandler): void {
    this.onStateHandler = handler;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    void this.connectLoop();
    this.giveUpTimer = setInterval(() => this.giveUp(), 1000);
  }

  // Queues a message; resolves with the broker's SendAck, or a local refusal (TOO_LARGE over
  // the broker's max_payload, STATUS_UNSPECIFIED once closed or after giveUpAfterMs). `seal`
  // overrides the session's choice for this message; ttlS 0 is the broker's default.
  send(to: Uint8Array, payload: Uint8Array | string, options: { ttlS?: number; seal?: boolean } = {}): Promise<SendResult> {
    const id = this.nextId();
    const ttlS = options.ttlS ?? 0;
    let bytes = typeof payload === "string" ? utf8(payload) : payload;
    if (options.seal ?? this.options.seal) bytes = sealPayload(this.options.key, to, id, bytes);
    this.stats.sends++;
    return new Promise((done) => {
      if (this.closed || bytes.length > this.maxPayload) {
        done(this.result(id, this.closed ? SendAck_Status.STATUS_UNSPECIFIED : SendAck_Status.TOO_LARGE,
          this.closed ? "session closed" : `payload of ${bytes.length} bytes is over the broker's max_payload ${this.maxPayload}`));
        return;
      }
      const encoded = encodeFrame(create(FrameSchema, { body: { case: "send", value: { id, to, payload: bytes, ttlS } } }));
      this.pending.set(toHex(id), { id, encoded, queuedAt: Date.now(), done });
      this.savePending();
      this.link?.sendEncoded(encoded);
    });
  }

  // Stops: no reconnects, the link closes, pending sends fail with STATUS_UNSPECIFIED.
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.giveUpTimer);
    this.wake?.();
    this.flushAcks();
    this.link?.close();
    // What the store holds stays there for the next session; only this one gives up on it.
    this.options.pendingStore?.save(this.storedSends());
    for (const id of [...this.pending.keys()]) this.finish(id, SendAck_Status.STATUS_UNSPECIFIED, "session closed");
  }

  private nextId(): Uint8Array {
    const counter = new Uint8Array(8);
    new DataView(counter.buffer).setBigUint64(0, this.idCounter++);
    return concat(this.idPrefix, counter);
  }

  private result(id: Uint8Array, status: SendAck_Status, detail: string): SendResult {
    const ok = status === SendAck_Status.ACCEPTED || status === SendAck_Status.DUPLICATE;
    return { id, status, statusName: SendAck_Status[status] ?? String(status), detail, ok };
  }

  private finish(key: string, status: SendAck_Status, detail: string): void {
    const send = this.pending.get(key);
    if (!send) return; // an ack for a send already finished
    this.pending.delete(key);
    this.savePending();
    send.done(this.result(send.id, status, detail));
  }

  private giveUp(): void {
    const cutoff = Date.now() - this.options.giveUpAfterMs;
    for (const [key, send] of this.pending) {
      if (send.queuedAt >= cutoff) break; // in send order: the rest are younger
      this.finish(key, SendAck_Status.STATUS_UNSPECIFIED, "not acknowledged within the dedup window; gave up");
    }
    const now = Date.now();
    for (const [key, expires] of this.seen) if (expires <= now) this.seen.delete(key);
  }

  private async connectLoop(): Promise<void> {
    const brokers = this.options.brokers;
    let backoff = this.options.backoffMinMs;
    // Sessions start at different brokers of the list; each reconnect moves on to the next.
    for (let attempt = Math.floor(Math.random() * brokers.length); !this.closed; attempt++) {
      let ended: LinkError;
      let dialed = false;
      try {
        const link = await connect({
          url: brokers[attempt % brokers.length],
          key: this.options.key,
          suite: this.options.suite,
          agent: this.options.agent,
          trust: this.options.trust,
          timeoutMs: this.options.connectTimeoutMs,
          WebSocket: this.options.WebSocket,
        });
        dialed = true;
        if (this.closed) {
          link.close();
          break;
        }
        ended = await this.serve(link);
        backoff = this.options.backoffMinMs;
      } catch (e) {
        ended = e instanceof LinkError ? e : new LinkError(String(e), "internal");
      }
      if (this.closed) break;
      if (this.replaced) ended = new LinkError("replaced by a newer session with this key", "replaced");
      this.replaced = false;
      this.onStateHandler(false, ended);
      // Back off with jitter; a GoAway's hint replaces the backoff.
      const wait = this.retryHintMs > 0 ? this.retryHintMs : backoff / 2 + Math.random() * (backoff / 2);
      if (!dialed) backoff = Math.min(backoff * 2, this.options.backoffMaxMs);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private async serve(link: Link): Promise<LinkError> {
    this.link = link;
    this.stats.connects++;
    this.retryHintMs = 0;
    this.maxPayload = link.maxPayload;
    // Credit is a window: acks open it again.
    link.send(create(FrameSchema, { body: { case: "credit", value: { n: this.options.credit } } }));
    for (const send of this.pending.values()) {
      link.sendEncoded(send.encoded);
      this.stats.resent++;
    }
    this.onStateHandler(true);
    const ended = await link.run((frame) => this.onFrame(link, frame));
    this.link = undefined;
    this.acks = []; // seqs of the link that ended: the broker redelivers what they named
    return ended;
  }

  private onFrame(link: Link, frame: Frame): void {
    switch (frame.body.case) {
      case "sendAck": {
        const ack = frame.body.value;
        this.finish(toHex(ack.id), ack.status, ack.detail);
        return;
      }
      case "deliver": {
        const deliver = frame.body.value;
        this.onDeliver(link, deliver);
        return;
      }
      case "goAway": {
        const goAway = frame.body.value;
        this.retryHintMs = Math.min(goAway.retryAfterMs, kMaxGoAwayRetryMs);
        if (goAway.reason === GoAway_Reason.REPLACED) {
          this.replaced = true;
          if (this.options.stopWhenReplaced) {
            this.onStateHandler(false, new LinkError("replaced by a newer session with this key", "replaced"));
            this.close();
          } else {
            this.retryHintMs = Math.max(this.retryHintMs, this.options.replacedRetryMs);
          }
        }
        return;
      }
      case "pong":
        return;
      default:
        link.close(); // a frame a broker never sends
    }
  }

  // Deliveries are handled one at a time, in order: while an async handler runs, the next ones
  // wait in `backlog`. A handler that returns at once costs no promise.
  private onDeliver(link: Link, deliver: Deliver): void {
    if (this.busy) {
      this.backlog.push([link, deliver]);
      return;
    }
    this.handle(link, deliver);
  }

  private handle(link: Link, deliver: Deliver): void {
    if (link.closed) return; // redelivered on the next link
    if (deliver.from.length !== 32 || deliver.id.length !== 16) {
      this.ack(link, deliver.seq); // acked, never shown
      return;
    }
    const key = toHex(deliver.from) + toHex(deliver.id);
    const seenUntil = this.seen.get(key);
    if (seenUntil !== undefined && seenUntil > Date.now()) {
      this.stats.duplicatesDropped++;
      this.ack(link, deliver.seq);
      return;
    }
    const message: Message = {
      from: deliver.from,
      fromText: toBase64Url(deliver.from),
      id: deliver.id,
      payload: deliver.payload,
      sentAtMs: Number(deliver.sentAtMs),
    };
    if (this.options.seal) {
      try {
        message.payload = openSealed(this.options.key, deliver.from, deliver.id, deliver.payload);
      } catch (e) {
        message.sealError = (e as Error).message;
      }
    }
    const handled = () => {
      this.stats.received++;
      this.seen.set(key, Date.now() + this.options.dedupWindowMs);
      this.saveDedup();
      this.ack(link, deliver.seq);
    };
    let result: void | Promise<void>;
    try {
      result = this.onMessageHandler(message);
    } catch {
      return; // not acknowledged: the broker delivers it again on the next link
    }
    if (!(result instanceof Promise)) {
      handled();
      return;
    }
    this.busy = result.then(handled, () => {}).finally(() => {
      this.busy = undefined;
      while (this.backlog.length > 0 && !this.busy) {
        const [nextLink, next] = this.backlog.shift()!;
        this.handle(nextLink, next);
      }
    });
  }

  private storedSends(): StoredSend[] {
    return [...this.pending.values()].map((send) => ({
      id: toBase64Url(send.id),
      frame: toBase64Url(send.encoded),
      queuedAt: send.queuedAt,
    }));
  }

  // One DeliverAck for everything handled in one turn of the event loop.
  private ack(link: Link, seq: bigint): void {
    if (link !== this.link) return;
    this.acks.push(seq);
    if (this.acks.length === 1) setTimeout(() => this.flushAcks(), 0);
  }

  private flushAcks(): void {
    if (this.acks.length === 0 || !this.link) return;
    this.link.send(create(FrameSchema, { body: { case: "deliverAck", value: { seqs: this.acks } } }));
    this.acks = [];
  }
}
