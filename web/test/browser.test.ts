// Two chat pages in a real browser (Debian's chromium, headless, driven by playwright-core)
// talk through a real broker: each sends to the other, one page closes, the other sends, the
// first opens again with the key its browser kept and receives what arrived while it was gone.
// Screenshots go to MESH_WEB_OUTPUT (the test's output folder).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { type Browser, chromium, type Page } from "playwright-core";

import { serveChat } from "../chat/serve.js";
import { Broker, cleanup, kDeadlineMs, tempDir } from "./support.js";

const dir = tempDir("mesh-web-browser-");
const output = process.env.MESH_WEB_OUTPUT ?? join(dir, "output");
let broker: Broker;
let browser: Browser;
let pageUrl: string;
let stopServer: () => void;

before(async () => {
  mkdirSync(output, { recursive: true });
  const { server, port } = await serveChat(0);
  stopServer = () => server.close();
  // Only the page's own origin may open links: the test proves a browser sends it and it passes.
  broker = new Broker(dir, ["--ws-allowed-origins", `http://127.0.0.1:${port}`]);
  await broker.start();
  pageUrl = `http://127.0.0.1:${port}/?broker=${encodeURIComponent(broker.wsUrl)}`;
  browser = await chromium.launch({
    executablePath: process.env.MESH_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // Root in a container has no user namespace for chromium's sandbox.
    args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
  });
});

after(async () => {
  await browser?.close();
  stopServer?.();
  await broker?.stop();
  cleanup(dir);
});

async function openChat(page: Page): Promise<string> {
  page.setDefaultTimeout(kDeadlineMs);
  await page.goto(pageUrl);
  await page.waitForSelector('#status[data-connected="true"]');
  const id = (await page.textContent("#my-id"))!.trim();
  assert.match(id, /^[A-Za-z0-9_-]{43}$/);
  return id;
}

async function send(page: Page, to: string, text: string): Promise<void> {
  await page.fill("#to", to);
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForSelector(`#log li.out:has-text("${text} [sent]")`);
}

function received(page: Page, text: string) {
  return page.waitForSelector(`#log li.in .text:text-is("${text}")`);
}

test("two pages chat through the broker; a closed page gets its mail when it opens again", async () => {
  // Two browser profiles: each keeps its own key in its own localStorage.
  const alice = await browser.newContext();
  const bob = await browser.newContext();
  let alicePage = await alice.newPage();
  const bobPage = await bob.newPage();
  const aliceId = await openChat(alicePage);
  const bobId = await openChat(bobPage);
  assert.notEqual(aliceId, bobId);

  await send(alicePage, bobId, "hello Bob");
  await received(bobPage, "hello Bob");
  await send(bobPage, aliceId, "hello Alice");
  await received(alicePage, "hello Alice");

  await alicePage.close();
  await send(bobPage, aliceId, "while you were away");
  await bobPage.screenshot({ path: join(output, "chat-bob.png"), fullPage: true });

  alicePage = await alice.newPage();
  assert.equal(await openChat(alicePage), aliceId, "the browser kept Alice's key");
  await received(alicePage, "while you were away");
  // Delivered once: the page does not show what it had already shown before it closed.
  assert.equal(await alicePage.locator("#log li.in").count(), 1);
  await alicePage.screenshot({ path: join(output, "chat-alice.png"), fullPage: true });
  assert.ok(broker.alive());
});
