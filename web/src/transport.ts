// One binary WebSocket as a queue of messages that can be awaited: the handshake reads its
// messages in turn, then the link reads records the same way. Written against the browser's
// WebSocket API, which the `ws` package also implements (Node before 22 has no global one).

export interface WebSocketLike {
  binaryType: string;
  readonly bufferedAmount: number;
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global) return global;
  const ws = (await import("ws")) as unknown as { WebSocket: WebSocketConstructor };
  return ws.WebSocket;
}

// Why a socket's messages ended: a close (its code and reason), an error, or a timeout.
export class SocketClosed extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
    this.name = "SocketClosed";
  }
}

export class MessageSocket {
  private readonly queue: Uint8Array[] = [];
  private waiter: { resolve: (m: Uint8Array) => void; reject: (e: Error) => void } | undefined;
  private ended: SocketClosed | undefined;

  private constructor(private readonly ws: WebSocketLike) {
    ws.onmessage = (event) => {
      if (!(event.data instanceof ArrayBuffer)) {
        this.end(new SocketClosed("the broker sent a text message", 1003));
        ws.close(1003, "binary messages only");
        return;
      }
      const message = new Uint8Array(event.data);
      if (this.waiter) {
        const waiter = this.waiter;
        this.waiter = undefined;
        waiter.resolve(message);
      } else {
        this.queue.push(message);
      }
    };
    ws.onclose = (event) => this.end(new SocketClosed(`closed by the broker (${event.code}${event.reason ? `: ${event.reason}` : ""})`, event.code));
    ws.onerror = () => this.end(new SocketClosed("WebSocket error", 1006));
  }

  // Opens `url` with the mesh subprotocol; rejects when it is not open within `timeoutMs`.
  static open(WebSocket: WebSocketConstructor, url: string, protocol: string, timeoutMs: number): Promise<MessageSocket> {
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new WebSocket(url, protocol);
      } catch (e) {
        reject(e as Error);
        return;
      }
      ws.binaryType = "arraybuffer";
      const timer = setTimeout(() => {
        ws.onopen = ws.onclose = ws.onerror = null;
        ws.close();
        reject(new SocketClosed(`no WebSocket to ${url} within ${timeoutMs} ms`, 1006));
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve(new MessageSocket(ws));
      };
      ws.onerror = ws.onclose = () => {
        clearTimeout(timer);
        reject(new SocketClosed(`cannot open a WebSocket to ${url}`, 1006));
      };
    });
  }

  get closed(): boolean {
    return this.ended !== undefined;
  }

  // Bytes handed to send() and not yet written to the network.
  get buffered(): number {
    return this.ws.bufferedAmount;
  }

  send(message: Uint8Array): void {
    if (!this.ended) this.ws.send(message);
  }

  // The next message; rejects once the socket ended, or after `timeoutMs` (then it closes it).
  receive(timeoutMs?: number): Promise<Uint8Array> {
    const next = this.queue.shift();
    if (next) return Promise.resolve(next);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.close(1008, "timeout");
          reject(new SocketClosed(`nothing from the broker within ${timeoutMs} ms`, 1006));
        }, timeoutMs);
      }
      this.waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  close(code = 1000, reason = ""): void {
    this.end(new SocketClosed(reason || "closed", code));
    try {
      this.ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  private end(why: SocketClosed): void {
    if (this.ended) return;
    this.ended = why;
    this.ws.onmessage = null;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(why);
  }
}
