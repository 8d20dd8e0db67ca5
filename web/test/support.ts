// What the Node tests share: a real mesh-broker on ephemeral loopback ports with its own data
// dir, mesh-cli (the C++ client) as the other peer, and waiting on conditions with a deadline.
// The binaries come from the CMake build: MESH_BROKER_BIN and MESH_CLI_BIN.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export const kDeadlineMs = 15_000;

export function binary(name: "MESH_BROKER_BIN" | "MESH_CLI_BIN"): string {
  const path = process.env[name];
  if (!path) throw new Error(`${name} is not set (the CMake test sets it)`);
  return path;
}

export async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, deadlineMs = kDeadlineMs): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export class Broker {
  readonly logPath: string;
  private proc: ChildProcess | undefined;
  ports: Record<string, number> = {};

  constructor(
    readonly dir: string,
    private readonly args: string[] = [],
  ) {
    this.logPath = join(dir, "broker.log");
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.ports.ws}/v1/link`;
  }

  get peerAddress(): string {
    return `127.0.0.1:${this.ports.peer}`;
  }

  async start(): Promise<void> {
    const { openSync } = await import("node:fs");
    const log = openSync(this.logPath, "a");
    const logStart = this.log().length; // a restart appends: only its own lines count
    const args = ["--data-dir", join(this.dir, "data"), "--listen-peer", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0",
      "--listen-grpc", "", "--listen-http", "", "--log-level", "debug", ...this.args];
    this.proc = spawn(binary("MESH_BROKER_BIN"), args, { stdio: ["ignore", "ignore", log] });
    let exited = false;
    this.proc.once("exit", () => (exited = true));
    this.ports = await waitFor("the broker to listen", () => {
      if (exited) throw new Error(`the broker exited: ${this.log().slice(-3000)}`);
      const found: Record<string, number> = {};
      for (const line of this.log().slice(logStart).split("\n")) {
        if (!line.includes('"listening"')) continue;
        const event = JSON.parse(line) as { listener: string; port: number };
        found[event.listener] = event.port;
      }
      return found.peer && found.ws ? found : undefined;
    });
  }

  log(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  alive(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  // SIGTERM: the broker must exit 0 (a crash or a sanitizer report would not).
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || !this.alive()) return;
    const code = await new Promise<number | null>((resolve) => {
      proc.once("exit", (c) => resolve(c));
      proc.kill("SIGTERM");
    });
    if (code !== 0) throw new Error(`mesh-broker exited ${code} on SIGTERM: ${this.log().slice(-3000)}`);
  }
}

export function cli(args: string[]): string {
  return execFileSync(binary("MESH_CLI_BIN"), args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

export function cliPeerId(keyPath: string): string {
  return /[A-Za-z0-9_-]{43}/.exec(cli(["id", "--key", keyPath]))![0];
}

// mesh-cli listen: a real C++ peer printing each message as a JSON line.
export class CliListener {
  private readonly proc: ChildProcess;
  private readonly lines: Record<string, unknown>[] = [];

  constructor(broker: string, keyPath: string, extra: string[] = []) {
    this.proc = spawn(binary("MESH_CLI_BIN"), ["listen", "--broker", broker, "--key", keyPath, ...extra], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    createInterface({ input: this.proc.stdout! }).on("line", (line) => this.lines.push(JSON.parse(line)));
  }

  next(): Promise<Record<string, unknown>> {
    return waitFor("a message at mesh-cli listen", () => this.lines.shift());
  }

  stop(): void {
    this.proc.kill("SIGTERM");
  }
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
