// Unit tests of the event-stream parser; run by test.sh (esbuild bundles this file
// with the TypeScript it imports, then node's test runner runs it).
import assert from "node:assert/strict";
import test from "node:test";
import { SseParser } from "../src/sse.ts";

function parse(chunks) {
  const events = [];
  const comments = [];
  const parser = new SseParser((e) => events.push(e), (c) => comments.push(c));
  for (const chunk of chunks) parser.push(chunk);
  parser.end();
  return { events, comments, lastEventId: parser.lastEventId };
}

test("one event with id, type and JSON data", () => {
  const { events, lastEventId } = parse(['id: 7\nevent: message\ndata: {"body":"hi"}\n\n']);
  assert.deepEqual(events, [{ type: "message", data: '{"body":"hi"}', lastEventId: "7" }]);
  assert.equal(lastEventId, "7");
});

test("events split anywhere across chunks, with every line ending", () => {
  const text = "id: 1\r\nevent: presence\r\ndata: a\r\n\r\nid: 2\revent: receipt\rdata: b\r\rid: 3\ndata: c\n\n";
  const whole = parse([text]).events;
  assert.equal(whole.length, 3);
  for (let size = 1; size <= 5; size++) {
    const chunks = [];
    for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
    assert.deepEqual(parse(chunks).events, whole, `chunks of ${size}`);
  }
  assert.deepEqual(
    whole.map((e) => [e.type, e.data, e.lastEventId]),
    [
      ["presence", "a", "1"],
      ["receipt", "b", "2"],
      ["message", "c", "3"],
    ],
  );
});

test("a CRLF split between two chunks is one line end", () => {
  const { events } = parse(["data: x\r", "\ndata: y\r", "\n\r", "\n"]);
  assert.deepEqual(events, [{ type: "message", data: "x\ny", lastEventId: "" }]);
});

test("comments are keep-alives, not events", () => {
  const { events, comments } = parse([": keep-alive\n\n:\n\n"]);
  assert.deepEqual(events, []);
  assert.deepEqual(comments, ["keep-alive", ""]);
});

test("the id carries over to later events and survives an event without data", () => {
  const { events, lastEventId } = parse(["id: 5\n\ndata: z\n\nid: 9\n\n"]);
  assert.deepEqual(events, [{ type: "message", data: "z", lastEventId: "5" }]);
  assert.equal(lastEventId, "9");
});

test("an event cut off by the end of the stream is dropped", () => {
  const { events } = parse(["data: whole\n\ndata: cut"]);
  assert.deepEqual(events.map((e) => e.data), ["whole"]);
});

test("field parsing: one space stripped, no colon, unknown fields, BOM", () => {
  const { events } = parse(["\uFEFFdata:  two spaces\ndata\nretry: 10\nfoo: bar\nevent:roster\n\n"]);
  assert.deepEqual(events, [{ type: "roster", data: " two spaces\n", lastEventId: "" }]);
});

test("the type resets after each event", () => {
  const { events } = parse(["event: roster\ndata: 1\n\ndata: 2\n\n"]);
  assert.deepEqual(events.map((e) => e.type), ["roster", "message"]);
});
