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

/** The local part of a JID ("" for a domain). */
export function localPart(jid: string): string {
  const b = jid.split("/")[0]!;
  const at = b.indexOf("@");
  return at < 0 ? "" : b.slice(0, at);
}

/** The domain of a JID. */
export function domainOf(jid: string): string {
  const b = jid.split("/")[0]!;
  return b.slice(b.indexOf("@") + 1);
}

/**
 * The room a person typed: a bare address as it is; a bare name (no `@`) in their
 * server's room service (`service`, from GET /me), else `name@conference.<their domain>`.
 */
export function roomAddress(input: string, me: string, service: string | null = null): string {
  const text = input.trim();
  if (text === "") return "";
  if (text.includes("@")) return bare(text);
  return `${text}@${service || `conference.${domainOf(me)}`}`.toLowerCase();
}

/** A URL safe to link to: http or https only (never javascript:, data: and the like). */
export function safeUrl(url: string | null | undefined): string | null {
  if (typeof url !== "string" || url === "") return null;
  try {
    const u = new URL(url);
    return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
  } catch {
    return null;
  }
}

const IMAGE = /\.(png|jpe?g|gif|webp|avif|bmp)$/i;

/** Whether a URL names a picture, by its extension (SVG excluded). */
export function isImageUrl(url: string): boolean {
  try {
    return IMAGE.test(new URL(url).pathname);
  } catch {
    return false;
  }
}

/** The file name at the end of a URL, for a link's text. */
export function fileName(url: string): string {
  try {
    const last = new URL(url).pathname.split("/").filter((s) => s !== "").pop();
    return last ? decodeURIComponent(last) : url;
  } catch {
    return url;
  }
}

const TYPES: Record<string, string> = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
  avif: "image/avif",
  bmp: "image/bmp",
  pdf: "application/pdf",
  txt: "text/plain",
  mp3: "audio/mpeg",
  ogg: "audio/ogg",
  mp4: "video/mp4",
  webm: "video/webm",
};

/** A file's media type: what the browser says, else by extension, else octet-stream. */
export function contentType(name: string, type: string): string {
  if (type !== "") return type;
  const ext = name.includes(".") ? name.slice(name.lastIndexOf(".") + 1).toLowerCase() : "";
  return TYPES[ext] ?? "application/octet-stream";
}

/** "12 KB", "3.4 MB". */
export function fileSize(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${Math.round(bytes / 1e3)} KB`;
  if (bytes < 1e9) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e9).toFixed(1)} GB`;
}
