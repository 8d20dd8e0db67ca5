// The demo chat page: the key lives in this browser (localStorage), messages go to a peer ID,
// and mail sent while this tab was closed arrives when it opens again. Sealed by default.
import {
  fromBase64Url,
  generateKeyPair,
  keyPairOf,
  type Message,
  parsePeerId,
  peerIdText,
  Session,
  type StoredSend,
  toBase64Url,
} from "../src/index.js";

const kKeyItem = "mesh.chat.key";
const kDedupItem = "mesh.chat.seen";
const kPendingItem = "mesh.chat.pending";

function loadKey() {
  const stored = localStorage.getItem(kKeyItem);
  if (stored) return keyPairOf(fromBase64Url(stored));
  const key = generateKeyPair();
  localStorage.setItem(kKeyItem, toBase64Url(key.privateKey));
  return key;
}

// ?broker=ws://HOST:PORT/v1/link, else the broker's WebSocket port on this page's host.
function brokerUrl(): string {
  const given = new URLSearchParams(location.search).get("broker");
  if (given) return given;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname || "127.0.0.1"}:7780/v1/link`;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function log(kind: "in" | "out", who: string, text: string): void {
  const item = document.createElement("li");
  item.className = kind;
  const whoSpan = document.createElement("span");
  whoSpan.className = "who";
  whoSpan.textContent = `${who} `;
  const textSpan = document.createElement("span");
  textSpan.className = "text";
  textSpan.textContent = text;
  item.append(whoSpan, textSpan);
  $("log").append(item);
}

const key = loadKey();
const url = brokerUrl();
const seal = $<HTMLInputElement>("seal");
// Sealed mail is opened; mail that was not sealed is shown as it came, marked.
const session = new Session({
  brokers: [url],
  key,
  seal: true,
  dedupStore: {
    load: () => JSON.parse(localStorage.getItem(kDedupItem) ?? "[]") as [string, number][],
    save: (entries) => localStorage.setItem(kDedupItem, JSON.stringify(entries)),
  },
  // Sends not yet acknowledged survive a reload and go again with their ids.
  pendingStore: {
    load: () => JSON.parse(localStorage.getItem(kPendingItem) ?? "[]") as StoredSend[],
    save: (sends) => localStorage.setItem(kPendingItem, JSON.stringify(sends)),
  },
});
session.onRestoredSend((result) => log("out", "earlier", `a message from before the reload [${result.ok ? "sent" : result.statusName}]`));
session.onMessage((message: Message) => {
  const text = new TextDecoder().decode(message.payload);
  log("in", message.fromText.slice(0, 8), message.sealError ? `${text} (not sealed: ${message.sealError})` : text);
});
session.onState((connected, why) => {
  const status = $("status");
  status.dataset.connected = String(connected);
  status.textContent = connected ? "connected" : `reconnecting (${why?.message ?? "…"})`;
});

$("my-id").textContent = peerIdText(key.publicKey);
$("broker").textContent = url;
$("copy-id").addEventListener("click", () => void navigator.clipboard?.writeText(peerIdText(key.publicKey)));
session.start();

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const toInput = $<HTMLInputElement>("to");
  const textInput = $<HTMLInputElement>("text");
  let to: Uint8Array;
  try {
    to = parsePeerId(toInput.value);
  } catch (e) {
    log("out", "error", (e as Error).message);
    return;
  }
  const text = textInput.value;
  textInput.value = "";
  const result = await session.send(to, text, { seal: seal.checked });
  log("out", toInput.value.trim().slice(0, 8), `${text} [${result.ok ? "sent" : `${result.statusName}: ${result.detail}`}]`);
});
