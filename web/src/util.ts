/** The bare JID of a full or bare JID, case-folded for use as a key. */
export function bare(jid: string): string {
  const slash = jid.indexOf("/");
  return (slash < 0 ? jid : jid.slice(0, slash)).toLowerCase();
}

/** The resource of a full JID, "" for a bare one. */
export function resource(jid: string): string {
  const slash = jid.indexOf("/");
  return slash < 0 ? "" : jid.slice(slash + 1);
}

/**
 * A random RFC 9562 version 4 UUID. crypto.randomUUID() exists only in secure
 * contexts; getRandomValues() exists everywhere.
 */
export function uuid(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** "14:05", or "3 Dec 14:05" for another day, in the browser's locale. */
export function shortTime(timestamp: string): string {
  const t = new Date(timestamp);
  if (Number.isNaN(t.getTime())) return "";
  const time = t.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (t.toDateString() === new Date().toDateString()) return time;
  return `${t.toLocaleDateString(undefined, { day: "numeric", month: "short" })} ${time}`;
}
