#!/usr/bin/env node
// End-to-end test of the web client in a real browser (Debian's Chromium, driven by
// playwright-core): two users register, become friends, chat, and one of them comes
// back to a message sent while its page was closed.
//
//   OUTPOST_URL=https://127.0.0.1:8443 OUTPOST_SCREENSHOT=/tmp/chat.png node e2e/chat.mjs
//   node e2e/chat.mjs https://127.0.0.1:8443
//
// The server may use a self-signed certificate. CHROMIUM_PATH overrides /usr/bin/chromium
// (`npx playwright install` cannot work here: it downloads a browser). Exits 0 when
// every step passed, 1 with the failing step named otherwise. Every wait is bounded.

import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 15_000; // any single wait or action
const TOTAL_TIMEOUT_MS = 180_000; // the whole run

const base = (process.argv[2] || process.env.OUTPOST_URL || "").replace(/\/+$/, "");
const screenshot = process.env.OUTPOST_SCREENSHOT || "";
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

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

    step("B closes its page");
    await b.close();

    const second = `while you were away, ${unique}`;
    step(`A sends "${second}"`);
    console.log(`  state: ${await send(a, second)}`);

    step("B opens the page again");
    b = pages.b = await openPage(contextB, "B");
    if (await b.getByTestId("login-jid").isVisible()) {
      console.log("  the stored token was not reused: logging in again");
      await b.getByTestId("login-jid").fill(users.b.jid);
      await b.getByTestId("login-password").fill(users.b.password);
      await b.getByTestId("login-submit").click();
    }
    await signedIn(b, "login");

    step("B finds both messages in the chat with A");
    await b.getByTestId(`friend-${users.a.jid}`).click();
    await seeOnce(b, second, "B");
    await seeOnce(b, first, "B");

    if (screenshot) {
      step(`screenshot to ${screenshot}`);
      await b.screenshot({ path: screenshot, fullPage: true });
    }

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
