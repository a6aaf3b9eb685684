// Converse.js (npm `converse.js`), a third-party browser XMPP client, in Chromium driven by
// Playwright: serves Converse's `dist/` and a page that starts it on 127.0.0.1, logs in as
// JID over the WebSocket at SERVICE, opens the chat with PEER, sends TEXT through the
// chat's text area, and waits until ANSWER shows in that chat. Prints JSON lines; exits 0
// when the answer is on screen, 1 on a failure (with a screenshot at SHOT, if given).
//
//   node converse_chat.mjs SERVICE JID PASSWORD PEER TEXT ANSWER [SHOT]
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { chromium } from "playwright-core";

const [service, jid, password, peer, text, answer, shot] = process.argv.slice(2);
const say = (event) => console.log(JSON.stringify(event));
const dist = join(import.meta.dirname, "node_modules", "converse.js", "dist");
const TYPES = { ".js": "text/javascript", ".css": "text/css", ".json": "application/json",
  ".wasm": "application/wasm", ".svg": "image/svg+xml", ".png": "image/png",
  ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf", ".mp3": "audio/mpeg",
  ".ogg": "audio/ogg" };

// WEB.md's recipe: Converse 14 is ESM-only; discovery off (it would replace the URL);
// messages only from contacts, as in real use (the test makes them friends first).
const page = `<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/dist/converse.min.css">
<script type="module" src="/dist/converse.min.js"></script></head><body>
<script type="module">
converse.plugins.add("e2e-hook", { initialize() { window.__converse = this._converse; } });
converse.initialize({ websocket_url: ${JSON.stringify(service)}, discover_connection_methods: false,
  view_mode: "fullscreen", whitelisted_plugins: ["e2e-hook"], allow_registration: false,
  assets_path: "/dist/", play_sounds: false });
</script></body></html>`;

const files = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html" }).end(page);
    return;
  }
  if (!path.startsWith("/dist/")) {
    res.writeHead(404).end();
    return;
  }
  try {
    const body = await readFile(join(dist, path.slice("/dist/".length)));
    res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => files.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${files.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium-headless-shell",
  args: ["--disable-background-networking"],
});
// The server's certificate is self-signed: the WebSocket's TLS is trusted for this test.
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const tab = await context.newPage();
tab.setDefaultTimeout(30_000);
let status = 1;
try {
  await tab.goto(base);
  await tab.fill("#converse-login-jid", jid);
  await tab.fill("#converse-login-password", password);
  await tab.click("#converse-login button[type=submit]");
  await tab.locator("converse-user-profile").first().waitFor();
  await tab.evaluate(async () => {
    await window.__converse.api.waitUntil("rosterContactsFetched");
    await window.__converse.api.waitUntil("chatBoxesFetched");
  });
  say({ event: "online" });
  await tab.evaluate((peer) => { window.__converse.api.chats.open(peer, {}, true); }, peer);
  const chat = tab.locator(`converse-chat[jid="${peer}"]`);
  const input = chat.locator("textarea.chat-textarea");
  await input.fill(text);
  await input.press("Enter");
  say({ event: "sent", body: text });
  await chat.locator(".chat-msg__text", { hasText: answer }).first().waitFor();
  say({ event: "message", body: answer });
  status = 0;
} catch (e) {
  say({ event: "error", text: String(e) });
  if (shot) await tab.screenshot({ path: shot }).catch(() => {});
} finally {
  await browser.close();
  files.close();
}
process.exit(status);
