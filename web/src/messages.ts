// A conversation's list of messages, one-to-one or in a room, and the pure logic that
// keeps it free of duplicates while history pages, live events and our sends' answers
// arrive in any order. No DOM here: test/messages.test.mjs runs it in node.

/**
 * What `data-state` says of a message: an outgoing one goes sending → delivered |
 * stored | queued (the server's answer, one tick) → received (a receipt, two ticks),
 * or failed; `sent` is an outgoing one from the history, whose fate is unknown.
 */
export type MessageState =
  | "sending"
  | "delivered"
  | "stored"
  | "queued"
  | "received"
  | "failed"
  | "sent"
  | "incoming";

export interface ChatMessage {
  /** Local and stable: the Idempotency-Key for our sends, else the first server id. */
  key: string;
  /** The server's ids for it: the send's answer, the archive's, the event's. */
  ids: string[];
  from: string;
  to: string;
  /** The sender's nickname, in a room. */
  nick: string | null;
  body: string;
  /** An out-of-band URL (XEP-0066): a shared file. */
  url: string | null;
  timestamp: string;
  outgoing: boolean;
  state: MessageState;
  error: string | null;
  /** Its id in the archive, once a history page listed it: the `before` cursor. */
  archiveId: string | null;
  /** Sent from this page. */
  local: boolean;
  /** An event told of it (a carbon, or a room's reflection, of our own send). */
  echoed: boolean;
}

export function isPending(m: ChatMessage): boolean {
  return m.state === "sending" || m.state === "failed";
}

function hasId(m: ChatMessage, id: string): boolean {
  return m.key === id || m.ids.includes(id);
}

/** Whether two copies share an id (a message may have several: the event's, the archive's). */
function sameMessage(m: ChatMessage, item: ChatMessage): boolean {
  return hasId(m, item.key) || item.ids.some((id) => hasId(m, id));
}

function union(a: string[], b: string[]): string[] {
  return [...a, ...b.filter((id) => !a.includes(id))];
}

/** Where our unanswered sends start, at the end of a conversation. */
export function pendingStart(messages: ChatMessage[]): number {
  let at = messages.length;
  while (at > 0 && isPending(messages[at - 1]!)) at--;
  return at;
}

/** Appends, but keeps our unanswered sends last. */
export function insertBeforePending(messages: ChatMessage[], items: ChatMessage[]): ChatMessage[] {
  const at = pendingStart(messages);
  return [...messages.slice(0, at), ...items, ...messages.slice(at)];
}

/**
 * Adds a message an event told of. Null when it is shown already: the same id; or,
 * for our own message, a send from this page not echoed yet with the same body (a
 * carbon or a room's reflection may come before the send's answer, and a carbon's id
 * need not be the answer's), which then gets the event's id.
 */
export function addLive(messages: ChatMessage[], item: ChatMessage): ChatMessage[] | null {
  const shown = messages.findIndex((m) => sameMessage(m, item));
  if (shown >= 0) {
    const m = messages[shown]!;
    const ids = union(m.ids, item.ids);
    const url = m.url ?? item.url;
    if (ids.length === m.ids.length && url === m.url) return null;
    // Learn the event's other ids, and a URL an earlier copy lacked.
    return messages.map((x, i) => (i === shown ? { ...x, ids, url } : x));
  }
  if (item.outgoing) {
    const own = messages.findIndex((m) => m.local && !m.echoed && m.body === item.body);
    if (own >= 0) {
      return messages.map((m, i) => (i === own ? { ...m, ids: union(m.ids, item.ids), echoed: true } : m));
    }
  }
  return insertBeforePending(messages, [item]);
}

/**
 * Records the server's answer to our send `key`: its id and state. A copy of the same
 * message that an event brought first, under that id, is dropped.
 */
export function settleSend(
  messages: ChatMessage[],
  key: string,
  id: string,
  state: (m: ChatMessage) => MessageState,
): ChatMessage[] {
  return messages
    .filter((m) => m.key === key || !(hasId(m, id) && !m.local))
    .map((m) => (m.key === key ? { ...m, ids: m.ids.includes(id) ? m.ids : [...m.ids, id], state: state(m), error: null } : m));
}

/**
 * Merges a history page (oldest first) into a conversation. A page item already shown
 * (the same id; or, since ids may differ between an event or a send's answer and the
 * archive, a message not yet archived with the same direction and body) is merged
 * into it. The others go next to the shown messages they follow in the page; with
 * none, before everything (`older`, and `newest` for a first page) or after it
 * (`gap`: a refresh after reconnecting).
 */
export function merge(existing: ChatMessage[], page: ChatMessage[], where: "older" | "newest" | "gap"): ChatMessage[] {
  const messages = [...existing];
  const claimed = new Set<number>();
  const matched = page.map((item) => {
    const id = item.archiveId!;
    let at = messages.findIndex((m, i) => !claimed.has(i) && sameMessage(m, item));
    if (at < 0) {
      at = messages.findIndex(
        (m, i) =>
          !claimed.has(i) &&
          m.archiveId === null &&
          m.outgoing === item.outgoing &&
          m.nick === item.nick &&
          m.body === item.body &&
          !isPending(m),
      );
    }
    if (at < 0) return null;
    claimed.add(at);
    const m = messages[at]!;
    messages[at] = {
      ...m,
      ids: union(m.ids, item.ids),
      archiveId: id,
      timestamp: item.timestamp,
      url: m.url ?? item.url,
    };
    return at;
  });
  const first = matched.find((at) => at !== null);
  let insertAt = first ?? (where === "gap" ? pendingStart(messages) : 0);
  const before = new Map<number, ChatMessage[]>();
  page.forEach((item, k) => {
    const at = matched[k];
    if (at !== null && at !== undefined) {
      insertAt = at + 1;
    } else {
      const group = before.get(insertAt) ?? [];
      group.push(item);
      before.set(insertAt, group);
    }
  });
  if (before.size === 0) return messages;
  const out: ChatMessage[] = [];
  for (let i = 0; i <= messages.length; i++) {
    out.push(...(before.get(i) ?? []));
    if (i < messages.length) out.push(messages[i]!);
  }
  return out;
}
