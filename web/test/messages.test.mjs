// Unit tests of the message-list logic (dedupe by id, history merges, our sends'
// answers) and of the small helpers for rooms and shared files; run by test.sh.
import assert from "node:assert/strict";
import test from "node:test";
import { addLive, merge, settleSend } from "../src/messages.ts";
import { contentType, fileName, isImageUrl, localPart, roomAddress, safeUrl } from "../src/util.ts";

function msg(id, fields = {}) {
  return {
    key: id,
    ids: [id],
    from: "room@conference.example.org/bob",
    to: "room@conference.example.org",
    nick: "bob",
    body: `body ${id}`,
    url: null,
    timestamp: "2026-01-01T00:00:00Z",
    outgoing: false,
    state: "incoming",
    error: null,
    archiveId: null,
    local: false,
    echoed: true,
    ...fields,
  };
}

/** One of our sends from this page, before any answer. */
function local(key, body) {
  return msg(key, { ids: [], nick: "me", body, outgoing: true, state: "sending", local: true, echoed: false });
}

function archived(id, fields = {}) {
  return msg(id, { archiveId: id, echoed: false, ...fields });
}

const keys = (list) => list.map((m) => m.key);

test("a live event already shown (same id) adds nothing", () => {
  const list = [msg("a"), msg("b")];
  assert.equal(addLive(list, msg("b")), null);
  assert.deepEqual(keys(addLive(list, msg("c"))), ["a", "b", "c"]);
});

test("live events go before our unanswered sends", () => {
  const list = [msg("a"), local("k1", "hi")];
  assert.deepEqual(keys(addLive(list, msg("b"))), ["a", "b", "k1"]);
});

test("the room's reflection of our send, before the answer: one message, which gets the id", () => {
  let list = [local("k1", "hello room")];
  list = addLive(list, msg("srv-1", { nick: "me", body: "hello room", outgoing: true, state: "sent" }));
  assert.deepEqual(keys(list), ["k1"]);
  assert.deepEqual(list[0].ids, ["srv-1"]);
  list = settleSend(list, "k1", "srv-1", () => "delivered");
  assert.equal(list.length, 1);
  assert.equal(list[0].state, "delivered");
  assert.deepEqual(list[0].ids, ["srv-1"]);
  // The reflection replayed (a reconnection) changes nothing.
  assert.equal(addLive(list, msg("srv-1", { nick: "me", body: "hello room", outgoing: true })), null);
});

test("the reflection after the answer is recognised by id", () => {
  let list = [local("k1", "x")];
  list = settleSend(list, "k1", "srv-1", () => "delivered");
  assert.equal(addLive(list, msg("srv-1", { nick: "me", body: "x", outgoing: true })), null);
});

test("a reflection first shown apart (body changed by the server) is dropped at the answer", () => {
  let list = [local("k1", "x ")];
  list = addLive(list, msg("srv-1", { nick: "me", body: "x", outgoing: true, state: "sent" }));
  assert.equal(list.length, 2);
  list = settleSend(list, "k1", "srv-1", () => "delivered");
  assert.deepEqual(keys(list), ["k1"]);
  assert.equal(list[0].state, "delivered");
});

test("a history page merges with live messages by id, oldest first, without duplicates", () => {
  // Live: b and c arrived before the first page; the page has a, b, c.
  const live = [msg("b"), msg("c")];
  const page = [archived("a"), archived("b"), archived("c")];
  const out = merge(live, page, "newest");
  assert.deepEqual(keys(out), ["a", "b", "c"]);
  assert.deepEqual(out.map((m) => m.archiveId), ["a", "b", "c"]);
});

test("room ids: the event's id and the archive's, known to both sides, make one message", () => {
  // The event carries the message id and the archive's (stanza_id); the history lists
  // the archive's id and the message's (message_id).
  const event = msg("E1", { ids: ["E1", "S1"] });
  const entry = archived("S1", { ids: ["S1", "E1"] });
  // Live first, then the page.
  let out = merge([event], [entry], "newest");
  assert.deepEqual(keys(out), ["E1"]);
  assert.equal(out[0].archiveId, "S1");
  // The page first, then the event (a replay after reconnecting).
  out = merge([], [entry], "newest");
  assert.equal(addLive(out, event), null);
  // Our own: the answer's id is the message id; the page learns it from message_id.
  let mine = settleSend([local("k1", "hi all")], "k1", "E2", () => "delivered");
  mine = merge(mine, [archived("S2", { ids: ["S2", "E2"], nick: "me", body: "hi all", outgoing: true })], "gap");
  assert.deepEqual(keys(mine), ["k1"]);
  assert.equal(addLive(mine, msg("E2", { ids: ["E2", "S2"], nick: "me", body: "hi all", outgoing: true })), null);
});

test("a gap refresh after reconnecting puts new messages after the shown ones, before pending sends", () => {
  const shown = [archived("a"), archived("b"), local("k1", "pending")];
  const page = [archived("b"), archived("c"), archived("d")];
  assert.deepEqual(keys(merge(shown, page, "gap")), ["a", "b", "c", "d", "k1"]);
});

test("an older page goes first", () => {
  const shown = [archived("c"), archived("d")];
  assert.deepEqual(keys(merge(shown, [archived("a"), archived("b")], "older")), ["a", "b", "c", "d"]);
});

test("our answered send matches its archived copy by body when the ids differ", () => {
  const mine = { ...local("k1", "same"), ids: ["send-id"], state: "delivered" };
  const out = merge([mine], [archived("arch-1", { nick: "me", body: "same", outgoing: true, state: "sent" })], "gap");
  assert.deepEqual(keys(out), ["k1"]);
  assert.equal(out[0].archiveId, "arch-1");
  assert.deepEqual(out[0].ids, ["send-id", "arch-1"]);
});

test("in a room, the same text from two people stays two messages", () => {
  const shown = [msg("live-1", { nick: "ann", body: "hi" })];
  const out = merge(shown, [archived("x", { nick: "bob", body: "hi" })], "gap");
  assert.equal(out.length, 2);
});

test("a URL carried by the archive fills in one the live copy lacked", () => {
  const out = merge([msg("a")], [archived("a", { url: "https://h/f.png" })], "gap");
  assert.equal(out[0].url, "https://h/f.png");
});

test("room addresses: a bare name goes to the user's conference service", () => {
  assert.equal(roomAddress("Lobby", "ann@example.org/web"), "lobby@conference.example.org");
  assert.equal(roomAddress(" team@muc.other.net ", "ann@example.org"), "team@muc.other.net");
  assert.equal(roomAddress("team@muc.other.net/nick", "ann@example.org"), "team@muc.other.net");
  assert.equal(roomAddress("  ", "ann@example.org"), "");
  // The room service GET /me names, when known.
  assert.equal(roomAddress("lobby", "ann@example.org", "muc.example.org"), "lobby@muc.example.org");
  assert.equal(localPart("ann@example.org/web"), "ann");
});

test("only http(s) URLs are links", () => {
  assert.equal(safeUrl("https://example.org/a b.png"), "https://example.org/a%20b.png");
  assert.equal(safeUrl("http://example.org/x"), "http://example.org/x");
  assert.equal(safeUrl("javascript:alert(1)"), null);
  assert.equal(safeUrl("data:text/html,<b>x</b>"), null);
  assert.equal(safeUrl("not a url"), null);
  assert.equal(safeUrl(null), null);
});

test("pictures by extension, file names from URLs, media types", () => {
  assert.equal(isImageUrl("https://h/upload/s/photo.PNG"), true);
  assert.equal(isImageUrl("https://h/upload/s/photo.jpeg?x=1"), true);
  assert.equal(isImageUrl("https://h/upload/s/drawing.svg"), false);
  assert.equal(isImageUrl("https://h/upload/s/notes.txt"), false);
  assert.equal(fileName("https://h/upload/s/a%20b%2F%C3%BC.png"), "a b/ü.png");
  assert.equal(contentType("x.PNG", ""), "image/png");
  assert.equal(contentType("x.bin", ""), "application/octet-stream");
  assert.equal(contentType("x.png", "image/webp"), "image/webp");
});
