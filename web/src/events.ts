// The event stream, `GET /api/v1/events`, read with fetch() so that the token goes in
// the Authorization header (EventSource cannot send one). It reconnects by itself
// with backoff and resumes with `Last-Event-ID`.

import {
  API,
  BACKOFF_FIRST_MS,
  Cancelled,
  nextBackoff,
  type Session,
  setFailing,
  type Show,
  sleep,
} from "./api.ts";
import { SseParser } from "./sse.ts";

export interface MessageEvent {
  from: string;
  to: string;
  body: string;
  id: string;
  type?: string;
  timestamp: string;
  carbon?: "sent" | "received";
  /** An out-of-band URL (XEP-0066): a shared file. */
  url?: string | null;
  /** The id the user's archive gave it, as the history lists it. */
  stanza_id?: string | null;
}

/** A message in a room, ours included (the room reflects it, with the id our send got). */
export interface GroupchatEvent {
  /** room@service/nick */
  from: string;
  room: string;
  nick: string;
  body?: string;
  /** The message's id: for ours, the one the send's answer gave. */
  id: string;
  /** The room archive's id for it, as the room history lists it (when the room gave one). */
  stanza_id?: string | null;
  timestamp: string;
  url?: string | null;
  /** The room's new subject. */
  subject?: string;
}

export interface OccupantEvent {
  from: string;
  room: string;
  nick: string;
  presence: Show;
  role: string;
  affiliation: string;
  jid?: string | null;
  /** This is us: unavailable means we are no longer in the room. */
  self: boolean;
}

export type ServerEvent =
  | { type: "message"; data: MessageEvent }
  | { type: "presence"; data: { from: string; presence: Show; status: string | null } }
  | { type: "subscription"; data: { from: string; type: "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" } }
  | {
      type: "roster";
      data: {
        from?: string;
        jid: string;
        name: string | null;
        subscription: "none" | "to" | "from" | "both" | "remove";
        ask: "subscribe" | null;
      };
    }
  | { type: "receipt"; data: { from: string; id: string } }
  | { type: "groupchat"; data: GroupchatEvent }
  | { type: "occupant"; data: OccupantEvent };

const KNOWN = new Set(["message", "presence", "subscription", "roster", "receipt", "groupchat", "occupant"]);

/** The server sends a keep-alive comment every 15 s; silence this long means a dead link. */
const SILENCE_MS = 45000;

export interface StreamHandlers {
  /** Each time the stream is (re)opened: the time to resynchronise snapshots. */
  onOpen(): void;
  onEvent(event: ServerEvent): void;
  /** The server no longer has the events after our cursor (410): start afresh. */
  onCursorLost(): void;
}

/**
 * Runs until the session ends. `lastEventId` is where to resume from (null for a new
 * stream); `saveCursor` is told each id seen, so a reload can resume too.
 */
export async function runEventStream(
  session: Session,
  lastEventId: string | null,
  saveCursor: (id: string | null) => void,
  handlers: StreamHandlers,
): Promise<void> {
  const who = {};
  let cursor = lastEventId;
  let delay = BACKOFF_FIRST_MS;
  try {
    while (!session.ended) {
      const attempt = new AbortController();
      const stop = () => attempt.abort();
      session.signal.addEventListener("abort", stop);
      let silence: ReturnType<typeof setTimeout> | undefined;
      const alive = () => {
        clearTimeout(silence);
        silence = setTimeout(stop, SILENCE_MS);
      };
      try {
        const headers: Record<string, string> = {
          Accept: "text/event-stream",
          Authorization: `Bearer ${session.token}`,
        };
        if (cursor !== null) headers["Last-Event-ID"] = cursor;
        alive();
        const response = await fetch(`${API}/events`, { headers, signal: attempt.signal, cache: "no-store" });
        if (response.status === 401) {
          session.unauthorized();
          return;
        }
        if (response.status === 410) {
          // The cursor is too old: what happened meanwhile is lost, so fetch snapshots.
          cursor = null;
          saveCursor(null);
          handlers.onCursorLost();
          continue;
        }
        if (!response.ok || response.body === null) throw new Error(`HTTP ${response.status}`);
        setFailing(who, false);
        delay = BACKOFF_FIRST_MS;
        handlers.onOpen();
        const parser = new SseParser((event) => {
          if (event.lastEventId !== "") {
            cursor = event.lastEventId;
            saveCursor(cursor);
          }
          if (!KNOWN.has(event.type)) return;
          let data: unknown;
          try {
            data = JSON.parse(event.data);
          } catch {
            return;
          }
          if (typeof data !== "object" || data === null) return;
          handlers.onEvent({ type: event.type, data } as ServerEvent);
        }, alive);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          alive();
          parser.push(decoder.decode(value, { stream: true }));
        }
        parser.push(decoder.decode());
        parser.end();
        // The server closed the stream: reconnect at once, showing the banner meanwhile.
        throw new Error("stream ended");
      } catch (error) {
        if (session.ended || error instanceof Cancelled) return;
        setFailing(who, true);
        try {
          await sleep(delay, session.signal);
        } catch {
          return;
        }
        delay = nextBackoff(delay);
      } finally {
        clearTimeout(silence);
        session.signal.removeEventListener("abort", stop);
        attempt.abort();
      }
    }
  } finally {
    setFailing(who, false);
  }
}
