// One pair through a broker with the TypeScript client in Node: a sender session keeps `window`
// sends outstanding, a receiver session takes them; prints one JSON line with the messages/s and
// the delivery latency (send to handler) percentiles, as mesh-bench --pairs 1 does for C++.
//   node dist/bench/bench.js --broker ws://127.0.0.1:7780/v1/link [--count 20000] [--size 256]
//                            [--window 256]
import { performance } from "node:perf_hooks";

import { generateKeyPair, Session } from "../src/index.js";

function arg(name: string, fallback: string): string {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : fallback;
}

const broker = arg("--broker", "ws://127.0.0.1:7780/v1/link");
const count = Number(arg("--count", "20000"));
const size = Math.max(8, Number(arg("--size", "256")));
const window = Number(arg("--window", "256"));

const sender = new Session({ brokers: [broker], key: generateKeyPair(), credit: 512 });
const receiver = new Session({ brokers: [broker], key: generateKeyPair(), credit: 512 });
const latenciesUs: number[] = [];
let received = 0;
let done: () => void;
const finished = new Promise<void>((resolve) => (done = resolve));
receiver.onMessage((message) => {
  const sentAt = new DataView(message.payload.buffer, message.payload.byteOffset, 8).getFloat64(0);
  latenciesUs.push((performance.now() - sentAt) * 1000);
  if (++received === count) done();
});

const connected = (s: Session) =>
  new Promise<void>((resolve) => {
    s.onState((up) => up && resolve());
  });
const up = Promise.all([connected(sender), connected(receiver)]);
sender.start();
receiver.start();
await up;

const to = receiver.publicKey;
let rejected = 0;
const start = performance.now();
let next = 0;
await new Promise<void>((resolve) => {
  let outstanding = 0;
  const pump = () => {
    while (outstanding < window && next < count) {
      const payload = new Uint8Array(size);
      new DataView(payload.buffer).setFloat64(0, performance.now());
      outstanding++;
      next++;
      void sender.send(to, payload).then((result) => {
        if (!result.ok) rejected++;
        outstanding--;
        if (next === count && outstanding === 0) resolve();
        else pump();
      });
    }
  };
  pump();
});
await finished;
const seconds = (performance.now() - start) / 1000;
latenciesUs.sort((a, b) => a - b);
const pct = (p: number) => Math.round(latenciesUs[Math.min(latenciesUs.length - 1, Math.floor(p * latenciesUs.length))]);
console.log(JSON.stringify({
  client: "typescript",
  node: process.versions.node,
  count,
  size,
  window,
  rejected,
  seconds: Number(seconds.toFixed(3)),
  msgs_per_s: Math.round(count / seconds),
  latency_us: { p50: pct(0.5), p99: pct(0.99), max: Math.round(latenciesUs.at(-1)!) },
}));
sender.close();
receiver.close();
