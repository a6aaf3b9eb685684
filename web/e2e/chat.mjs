#!/usr/bin/env node
// End-to-end test of the web client in a real browser (Debian's Chromium, driven by
// playwright-core): two users register, become friends, chat, join the same room and
// talk there, share a picture (one-to-one and in the room), and one of them comes back
// to what was sent while its page was closed.
//
//   OUTPOST_URL=https://127.0.0.1:8443 OUTPOST_SCREENSHOT=/tmp/chat.png node e2e/chat.mjs
//   node e2e/chat.mjs https://127.0.0.1:8443
//
// The server may use a self-signed certificate. CHROMIUM_PATH overrides /usr/bin/chromium
// (`npx playwright install` cannot work here: it downloads a browser). Exits 0 when
// every step passed, 1 with the failing step named otherwise. Every wait is bounded.
//
// Optional: OUTPOST_ROOM_SCREENSHOT (default: room.png next to OUTPOST_SCREENSHOT);
// OUTPOST_UPLOAD_MAX, the server's upload limit in bytes, to check that a bigger file is
// refused with "file too large".

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 15_000; // any single wait or action
const TOTAL_TIMEOUT_MS = 180_000; // the whole run

const base = (process.argv[2] || process.env.OUTPOST_URL || "").replace(/\/+$/, "");
const screenshot = process.env.OUTPOST_SCREENSHOT || "";
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const roomScreenshot = process.env.OUTPOST_ROOM_SCREENSHOT || (screenshot ? join(dirname(screenshot), "room.png") : "");
const uploadMax = Number(process.env.OUTPOST_UPLOAD_MAX || 0);

let current = "start";
const pageErrors = [];

function step(name) {
  current = name;
  console.log(`- ${name}`);
}

function fail(message) {
  throw new Error(message);
}

const unique = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const users = {
  a: { username: `e2ea${unique}`, password: `pw-a-${unique}`, jid: "" },
  b: { username: `e2eb${unique}`, password: `pw-b-${unique}`, jid: "" },
};

/** A valid PNG of w×h pixels in two colours, made here (no file on disk). */
function makePng(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, "ascii");
    const tail = Buffer.alloc(4);
    tail.writeUInt32BE(crc(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, tail]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + 3 * w);
    for (let x = 0; x < w; x++) row.set(((x >> 3) + (y >> 3)) % 2 ? [0x25, 0x63, 0xc9] : [0xf4, 0xa2, 0x1a], 1 + 3 * x);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

async function openPage(context, who) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on("pageerror", (error) => pageErrors.push(`${who}: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") console.log(`  [${who} console] ${message.text()}`);
  });
  const response = await page.goto(`${base}/`, { timeout: STEP_TIMEOUT_MS });
  if (!response || !response.ok()) fail(`GET ${base}/ answered ${response ? response.status() : "nothing"}`);
  return page;
}

async function register(page, user) {
  await page.getByTestId("register-username").fill(user.username);
  await page.getByTestId("register-password").fill(user.password);
  await page.getByTestId("register-submit").click();
  await signedIn(page, "register");
  user.jid = (await page.getByTestId("me").textContent())?.trim() ?? "";
  if (!user.jid.includes("@")) fail(`the page shows "${user.jid}" as the user's JID`);
}

/** Waits for the signed-in view, or fails with the error the form shows. */
async function signedIn(page, form) {
  const error = page.getByTestId(`${form}-error`);
  await page
    .getByTestId("logout")
    .or(error)
    .first()
    .waitFor({ timeout: STEP_TIMEOUT_MS })
    .catch(() => fail(`${form}: neither the signed-in view nor an error appeared`));
  if (await error.isVisible()) fail(`${form} failed: ${await error.textContent()}`);
}

function messageIn(page, text) {
  return page.getByTestId("message-list").getByTestId("message").filter({ hasText: text });
}

/** Waits until exactly one message with `text` is shown (a duplicate is a bug). */
async function seeOnce(page, text, who) {
  await messageIn(page, text)
    .first()
    .waitFor({ timeout: STEP_TIMEOUT_MS })
    .catch(() => fail(`${who} does not see the message "${text}"`));
  await page.waitForTimeout(300);
  const count = await messageIn(page, text).count();
  if (count !== 1) fail(`${who} shows the message "${text}" ${count} times`);
}

async function send(page, text) {
  await page.getByTestId("message-input").fill(text);
  await page.getByTestId("message-send").click();
  const answered = messageIn(page, text).and(
    page.locator(':is([data-state="delivered"], [data-state="stored"], [data-state="queued"], [data-state="received"])'),
  );
  const failed = messageIn(page, text).and(page.locator('[data-state="failed"]'));
  await answered
    .or(failed)
    .first()
    .waitFor({ timeout: STEP_TIMEOUT_MS })
    .catch(() => fail(`the server did not answer the send of "${text}"`));
  if (await failed.count()) fail(`sending "${text}" failed: ${await failed.first().textContent()}`);
  return answered.first().getAttribute("data-state");
}

function roomView(page, jid) {
  return page.locator(`[data-testid="room-view"][data-room="${jid}"]`);
}

/** Joins a room through the form; waits for its view, or fails with the form's error. */
async function joinRoom(page, room, nick, who) {
  await page.getByTestId("join-room-jid").fill(room.typed);
  await page.getByTestId("join-room-nick").fill(nick);
  await page.getByTestId("join-room-submit").click();
  const error = page.getByTestId("join-room-error");
  await roomView(page, room.jid)
    .and(page.locator('[data-joined="true"]'))
    .or(error)
    .first()
    .waitFor()
    .catch(() => fail(`${who}: the join of ${room.jid} neither opened the room nor showed an error`));
  if (await error.isVisible()) fail(`${who} cannot join ${room.jid}: ${await error.textContent()}`);
}

async function seeOccupants(page, nicks, who) {
  for (const nick of nicks) {
    await page
      .getByTestId("occupant-list")
      .getByTestId(`occupant-${nick}`)
      .waitFor()
      .catch(() => fail(`${who}'s occupant list lacks "${nick}"`));
  }
}

/** Attaches a file in the open conversation's composer. */
async function attach(page, name, mimeType, buffer) {
  await page.getByTestId("file-input").setInputFiles({ name, mimeType, buffer });
}

/** Waits until the open conversation shows `count` pictures, all loaded and decoded. */
async function seeImages(page, count, width, who) {
  await page
    .waitForFunction(
      ([n, w]) => {
        const imgs = [...document.querySelectorAll('[data-testid="message-list"] img[data-testid="message-image"]')];
        return imgs.length === n && imgs.every((img) => img.complete && img.naturalWidth === w);
      },
      [count, width],
      { timeout: STEP_TIMEOUT_MS },
    )
    .catch(async () => {
      const n = await page.getByTestId("message-list").getByTestId("message-image").count();
      const upload = page.getByTestId("upload-error");
      const why = (await upload.count()) ? ` (upload error: ${await upload.first().textContent()})` : "";
      fail(`${who} shows ${n} picture(s) in the conversation, ${count} loaded ones expected${why}`);
    });
}

async function main() {
  if (!base) fail("give the server's base URL as the first argument or in OUTPOST_URL");
  if (!existsSync(executablePath)) {
    fail(`no Chromium at ${executablePath}: install Debian's \`chromium\` package or set CHROMIUM_PATH`);
  }
  step(`launch ${executablePath}`);
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  const pages = {};
  try {
    const contextA = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 700 } });
    const contextB = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 700 } });
    contextA.setDefaultTimeout(STEP_TIMEOUT_MS);
    contextB.setDefaultTimeout(STEP_TIMEOUT_MS);

    step(`A registers ${users.a.username}`);
    pages.a = await openPage(contextA, "A");
    await register(pages.a, users.a);
    step(`B registers ${users.b.username}`);
    pages.b = await openPage(contextB, "B");
    await register(pages.b, users.b);
    const a = pages.a;
    let b = pages.b;
    console.log(`  A is ${users.a.jid}, B is ${users.b.jid}`);

    step("A asks B to be friends");
    await a.getByTestId("add-friend-jid").fill(users.b.jid);
    await a.getByTestId("add-friend-submit").click();
    await a.getByTestId(`friend-${users.b.jid}`).waitFor();

    step("B sees the request and accepts it");
    await b
      .getByTestId(`request-accept-${users.a.jid}`)
      .click()
      .catch(() => fail("B never saw A's friend request"));
    await b.getByTestId(`friend-${users.a.jid}`).waitFor();

    step("A sees B as a friend, online");
    await a
      .locator(
        `[data-testid="friend-${users.b.jid}"]:is([data-subscription="to"], [data-subscription="both"]):not([data-presence="unavailable"])`,
      )
      .waitFor()
      .catch(async () => {
        const f = a.getByTestId(`friend-${users.b.jid}`);
        fail(
          `A's entry for B has subscription "${await f.getAttribute("data-subscription")}" and presence "${await f.getAttribute("data-presence")}"`,
        );
      });

    const first = `hello B, ${unique}`;
    step(`A sends "${first}"`);
    await a.getByTestId(`friend-${users.b.jid}`).click();
    console.log(`  state: ${await send(a, first)}`);

    step("B gets it: an unread count, then the message in the chat");
    await b
      .getByTestId(`unread-${users.a.jid}`)
      .waitFor()
      .catch(() => fail("B's page shows no unread count for A: the event stream did not bring the message"));
    await b.getByTestId(`friend-${users.a.jid}`).click();
    await seeOnce(b, first, "B");
    await b.getByTestId(`unread-${users.a.jid}`).waitFor({ state: "detached" });

    // ---- Rooms
    const domain = users.a.jid.split("@")[1];
    const roomName = `e2e-${unique}`;
    const room = { typed: roomName, jid: `${roomName}@conference.${domain}` };
    const nickA = users.a.username; // the default: the JID's local part
    const nickB = `bee-${unique}`;

    step(`A joins the room "${roomName}" by its bare name (${room.jid}), with the default nickname`);
    await joinRoom(a, room, "", "A");
    await a.getByTestId(`room-${room.jid}`).waitFor();
    await seeOccupants(a, [nickA], "A");

    step(`B tries to join it as "${nickA}", A's nickname: the form says the nickname is in use`);
    await b.getByTestId("join-room-jid").fill(room.jid);
    await b.getByTestId("join-room-nick").fill(nickA);
    await b.getByTestId("join-room-submit").click();
    const conflict = b.getByTestId("join-room-error");
    await conflict.waitFor().catch(() => fail("B's join with a nickname in use shows no error"));
    if (!/nickname is in use/i.test((await conflict.textContent()) ?? "")) {
      fail(`B's join with a nickname in use says "${await conflict.textContent()}"`);
    }

    step(`B joins it by its address, as "${nickB}"`);
    await joinRoom(b, { ...room, typed: room.jid }, nickB, "B");

    step("each occupant list shows both");
    await seeOccupants(b, [nickA, nickB], "B");
    await seeOccupants(a, [nickA, nickB], "A");

    const roomHello = `hello room, ${unique}`;
    step(`A says "${roomHello}" in the room; B sees it once, from A's nickname`);
    console.log(`  state: ${await send(a, roomHello)}`);
    await seeOnce(b, roomHello, "B");
    const from = await messageIn(b, roomHello).first().getAttribute("data-nick");
    if (from !== nickA) fail(`B shows A's room message from "${from}", not "${nickA}"`);
    await seeOnce(a, roomHello, "A (its own message, reflected by the room)");

    const roomReply = `hello A, from the room, ${unique}`;
    step(`B answers "${roomReply}"; A sees it once`);
    console.log(`  state: ${await send(b, roomReply)}`);
    await seeOnce(a, roomReply, "A");
    await seeOnce(b, roomReply, "B (its own message, reflected by the room)");

    // ---- Files
    const png = makePng(96, 64);
    step("A opens the chat with B; B opens the chat with A");
    await a.getByTestId(`friend-${users.b.jid}`).click();
    await b.getByTestId(`friend-${users.a.jid}`).click();

    if (uploadMax > 0) {
      step(`A attaches a file of ${uploadMax + 1} bytes, over the server's limit: "file too large"`);
      await attach(a, "too-big.bin", "application/octet-stream", Buffer.alloc(uploadMax + 1, 7));
      const error = a.getByTestId("upload-error");
      await error.waitFor().catch(() => fail("A's page shows no upload error for a file over the limit"));
      const text = (await error.textContent()) ?? "";
      if (!/file too large/i.test(text)) fail(`the upload error says "${text}", not "file too large"`);
      await a.getByTestId("upload-dismiss").click();
      await error.waitFor({ state: "detached" });
    }

    const picture = `dot-${unique}.png`;
    step(`A attaches ${picture} (${png.length} bytes) in the chat with B, and sees its progress`);
    // Hold the slot request a moment, so that the upload's progress is there to be seen.
    const slowSlot = async (route) => {
      await new Promise((resolve) => setTimeout(resolve, 600));
      await route.continue().catch(() => {});
    };
    await a.route("**/api/v1/uploads", slowSlot);
    await attach(a, picture, "image/png", png);
    await a
      .locator('[data-testid="upload"][data-state="uploading"]')
      .filter({ hasText: picture })
      .getByTestId("upload-progress")
      .waitFor()
      .catch(() => fail("A's page shows no progress for the upload"));
    await a.unroute("**/api/v1/uploads", slowSlot);
    const mine = a.getByTestId("message-list").getByTestId("message").filter({ has: a.getByTestId("message-link") });
    await mine
      .and(a.locator(':is([data-state="delivered"], [data-state="stored"], [data-state="queued"], [data-state="received"])'))
      .first()
      .waitFor()
      .catch(async () => {
        const error = a.getByTestId("upload-error");
        if (await error.count()) fail(`A's upload failed: ${await error.first().textContent()}`);
        fail("A's page shows no sent message with the file's link");
      });
    await a.getByTestId("upload").waitFor({ state: "detached" });

    step("B sees the link and the picture's preview, and the link gives back the same bytes");
    await seeImages(b, 1, 96, "B");
    const link = b.getByTestId("message-list").getByTestId("message-link");
    if ((await link.count()) !== 1) fail(`B shows ${await link.count()} file links, 1 expected`);
    const getUrl = await link.getAttribute("href");
    if ((await link.textContent())?.trim() !== picture) fail(`B's link reads "${await link.textContent()}", not "${picture}"`);
    const fetched = await contextB.request.get(getUrl, { timeout: STEP_TIMEOUT_MS });
    if (!fetched.ok()) fail(`GET ${getUrl} answered ${fetched.status()}`);
    const bytes = await fetched.body();
    if (!bytes.equals(png)) fail(`GET ${getUrl} gave ${bytes.length} bytes that differ from the ${png.length} sent`);
    console.log(`  ${getUrl}: ${bytes.length} identical bytes, ${fetched.headers()["content-type"]}`);

    step("in the room, A shares the picture too; B, there, sees it");
    await a.getByTestId(`room-${room.jid}`).click();
    await b.getByTestId(`room-${room.jid}`).click();
    await attach(a, picture, "image/png", png);
    await seeImages(b, 1, 96, "B in the room");
    await seeImages(a, 1, 96, "A in the room");

    if (roomScreenshot) {
      step(`screenshot of the room to ${roomScreenshot}`);
      await b.screenshot({ path: roomScreenshot, fullPage: true });
    }

    const roomElsewhere = `while you look elsewhere, ${unique}`;
    step(`B goes to the chat with A; A says "${roomElsewhere}" in the room: B gets an unread count`);
    await b.getByTestId(`friend-${users.a.jid}`).click();
    await send(a, roomElsewhere);
    await b
      .getByTestId(`room-unread-${room.jid}`)
      .waitFor()
      .catch(() => fail("B's room entry shows no unread count"));
    await b.getByTestId(`room-${room.jid}`).click();
    await seeOnce(b, roomElsewhere, "B");
    await b.getByTestId(`room-unread-${room.jid}`).waitFor({ state: "detached" });

    step("B closes its page");
    await b.close();

    const second = `while you were away, ${unique}`;
    step(`A sends "${second}"`);
    await a.getByTestId(`friend-${users.b.jid}`).click();
    console.log(`  state: ${await send(a, second)}`);
    const roomAway = `in the room while you were away, ${unique}`;
    step(`A says "${roomAway}" in the room`);
    await a.getByTestId(`room-${room.jid}`).click();
    console.log(`  state: ${await send(a, roomAway)}`);

    step("B opens the page again");
    b = pages.b = await openPage(contextB, "B");
    if (await b.getByTestId("login-jid").isVisible()) {
      console.log("  the stored token was not reused: logging in again");
      await b.getByTestId("login-jid").fill(users.b.jid);
      await b.getByTestId("login-password").fill(users.b.password);
      await b.getByTestId("login-submit").click();
    }
    await signedIn(b, "login");

    step("B finds both messages and the picture in the chat with A");
    await b.getByTestId(`friend-${users.a.jid}`).click();
    await seeOnce(b, second, "B");
    await seeOnce(b, first, "B");
    await seeImages(b, 1, 96, "B, in the chat's history");

    if (screenshot) {
      step(`screenshot to ${screenshot}`);
      await b.screenshot({ path: screenshot, fullPage: true });
    }

    step("B's room is still listed (a bookmark), with an unread count; its history has every message once");
    await b
      .getByTestId(`room-${room.jid}`)
      .waitFor()
      .catch(() => fail("B's room list lacks the room after reopening the page"));
    await b
      .getByTestId(`room-unread-${room.jid}`)
      .waitFor()
      .catch(() => fail("B's room entry shows no unread count for what A said while B's page was closed"));
    await b.getByTestId(`room-${room.jid}`).click();
    await roomView(b, room.jid).and(b.locator('[data-joined="true"]')).waitFor();
    for (const text of [roomHello, roomReply, roomElsewhere, roomAway]) await seeOnce(b, text, "B");
    await seeImages(b, 1, 96, "B, in the room's history");
    await seeOccupants(b, [nickA, nickB], "B");

    step("A leaves the room: it leaves A's list and B's occupant list");
    await a.getByTestId("room-leave").click();
    await a.getByTestId(`room-${room.jid}`).waitFor({ state: "detached" });
    await b
      .getByTestId("occupant-list")
      .getByTestId(`occupant-${nickA}`)
      .waitFor({ state: "detached" })
      .catch(() => fail("B's occupant list still shows A after A left"));

    step("B logs out and A sees B offline");
    await b.getByTestId("logout").click();
    await b.getByTestId("login-jid").waitFor();
    await a
      .locator(`[data-testid="friend-${users.b.jid}"][data-presence="unavailable"]`)
      .waitFor()
      .catch(() => fail("A still shows B online after B logged out"));

    if (pageErrors.length > 0) fail(`uncaught errors in the pages:\n  ${pageErrors.join("\n  ")}`);
  } catch (error) {
    if (screenshot) {
      const path = screenshot.replace(/(\.png)?$/, "-failure.png");
      for (const [who, page] of Object.entries(pages)) {
        if (!page.isClosed()) {
          await page
            .screenshot({ path: path.replace(/-failure\.png$/, `-failure-${who}.png`), fullPage: true, timeout: 5000 })
            .catch(() => {});
        }
      }
    }
    throw error;
  } finally {
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => {
  console.error(`e2e FAILED: the whole run took over ${TOTAL_TIMEOUT_MS / 1000} s (last step: ${current})`);
  console.error("e2e: 0 passed, 1 failed");
  process.exit(1);
}, TOTAL_TIMEOUT_MS);

main().then(
  () => {
    clearTimeout(watchdog);
    console.log("e2e: 1 passed, 0 failed");
  },
  (error) => {
    clearTimeout(watchdog);
    console.error(`e2e FAILED at step "${current}": ${error instanceof Error ? error.message : error}`);
    if (pageErrors.length > 0) console.error(`uncaught errors in the pages:\n  ${pageErrors.join("\n  ")}`);
    console.error("e2e: 0 passed, 1 failed");
    process.exit(1);
  },
);
