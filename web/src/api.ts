// The REST API v1 client: typed routes, problem+json errors (RFC 9457), and retries
// with backoff for requests that may safely be repeated.

export const API = "/api/v1";

export type Show = "available" | "chat" | "away" | "xa" | "dnd" | "unavailable";
export type Subscription = "none" | "to" | "from" | "both";

export interface Friend {
  jid: string;
  name: string | null;
  subscription: Subscription;
  ask: "subscribe" | null;
  presence: Show;
  status: string | null;
}

export interface LoginAnswer {
  token: string;
  expires_at: string;
  jid: string;
  resource: string;
}

export type SendState = "delivered" | "stored" | "queued";

export interface ArchivedMessage {
  id: string;
  from: string;
  to: string;
  body: string;
  timestamp: string;
  /** An out-of-band URL (XEP-0066): a shared file. */
  url?: string | null;
  /** The id its sender gave it: an event's `id`, or our send's answer's. */
  message_id?: string | null;
}

export interface HistoryPage {
  messages: ArchivedMessage[];
  complete: boolean;
}

export interface Occupant {
  nick: string;
  role: string;
  affiliation: string;
  /** The occupant's real JID, when the room shows it to us. */
  jid: string | null;
  presence: Show;
}

/** GET /me: this login, and what the server offers it. */
export interface Me {
  jid: string;
  resource: string;
  expires_at: string;
  /** The room service (XEP-0045) of the user's domain, e.g. "conference.example.org". */
  rooms_service?: string | null;
  /** Whether file upload (XEP-0363) is available. */
  upload?: boolean;
}

/** A group chat room (XEP-0045) the API session is in, or has bookmarked. */
export interface Room {
  jid: string;
  name: string | null;
  nick: string;
  joined: boolean;
  subject: string | null;
  occupants: Occupant[];
}

export interface RoomArchivedMessage {
  /** The archive's id (the `before`/`after` cursor). */
  id: string;
  /** The message's own id, as the send's answer and the groupchat event gave it (when known). */
  message_id?: string | null;
  /** room@service/nick */
  from: string;
  nick: string;
  body: string;
  timestamp: string;
  url?: string | null;
}

export interface RoomHistoryPage {
  messages: RoomArchivedMessage[];
  complete: boolean;
}

/** An upload slot (XEP-0363): PUT the file to `put_path` on this origin, share `get_url`. */
export interface UploadSlot {
  put_url: string;
  put_path: string;
  put_headers: Record<string, string>;
  get_url: string;
}

/** An error answer of the API, from its problem+json body. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly title: string,
    readonly detail: string | null,
    /** Seconds, from `Retry-After` on 429 and 503. */
    readonly retryAfter: number | null,
  ) {
    super(detail || title || `HTTP ${status}`);
  }
}

/** The request never got an HTTP answer: the network or the server is down. */
export class NetworkError extends Error {}

/** The request was given up because the session ended (logout, 401, page left). */
export class Cancelled extends Error {}

/** The message to show a person for any error. */
export function describe(error: unknown): string {
  if (error instanceof ApiError || error instanceof NetworkError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}

async function problem(response: Response): Promise<ApiError> {
  let title = response.statusText;
  let detail: string | null = null;
  let code = "";
  const type = response.headers.get("Content-Type") ?? "";
  if (type.includes("json")) {
    try {
      const body = (await response.json()) as Record<string, unknown>;
      if (typeof body.title === "string") title = body.title;
      if (typeof body.detail === "string" && body.detail !== "") detail = body.detail;
      if (typeof body.code === "string") code = body.code;
    } catch {
      // Not JSON after all: keep the status text.
    }
  }
  const seconds = Number(response.headers.get("Retry-After"));
  const retryAfter = Number.isFinite(seconds) && seconds > 0 ? seconds : null;
  return new ApiError(response.status, code, title, detail, retryAfter);
}

// ---------------------------------------------------------------------------------
// Connectivity: every loop that is waiting to retry after a network error registers
// here, and the "Reconnecting…" banner shows while any does.

const failing = new Set<object>();
const watchers = new Set<(offline: boolean) => void>();

export function setFailing(who: object, isFailing: boolean): void {
  const before = failing.size > 0;
  if (isFailing) failing.add(who);
  else failing.delete(who);
  const after = failing.size > 0;
  if (before !== after) for (const watch of watchers) watch(after);
}

export function watchConnectivity(watch: (offline: boolean) => void): () => void {
  watchers.add(watch);
  watch(failing.size > 0);
  return () => watchers.delete(watch);
}

export const BACKOFF_FIRST_MS = 1000;
const REQUEST_TIMEOUT_MS = 30000;
export const BACKOFF_MAX_MS = 15000;

export function nextBackoff(ms: number): number {
  return Math.min(ms * 2, BACKOFF_MAX_MS);
}

/** Resolves after `ms`, or rejects with Cancelled as soon as `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new Cancelled());
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Cancelled());
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

// ---------------------------------------------------------------------------------

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  /**
   * Repeat the request after network errors, 502-504 and 429 (honouring Retry-After)
   * until it gets an answer or the session ends. Only for requests whose repetition
   * is harmless: reads, and sends carrying an Idempotency-Key.
   */
  retry?: boolean;
}

/**
 * One signed-in session: the token, and an AbortSignal that ends every request and
 * retry loop when the session ends.
 */
export class Session {
  private readonly abort = new AbortController();

  constructor(
    readonly token: string,
    readonly jid: string,
    /** Called once when the server answers 401: the token is no longer valid. */
    private readonly onUnauthorized: () => void,
  ) {}

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  get ended(): boolean {
    return this.abort.signal.aborted;
  }

  end(): void {
    this.abort.abort();
  }

  unauthorized(): void {
    if (this.ended) return;
    this.end();
    this.onUnauthorized();
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const who = {};
    let delay = BACKOFF_FIRST_MS;
    try {
      for (;;) {
        let response: Response;
        try {
          response = await send(method, path, options, this.token, this.signal);
        } catch (error) {
          if (this.ended) throw new Cancelled();
          if (!options.retry) throw error;
          setFailing(who, true);
          await sleep(delay, this.signal);
          delay = nextBackoff(delay);
          continue;
        }
        if (response.status === 401) {
          this.unauthorized();
          throw await problem(response);
        }
        const transient = response.status === 429 || (response.status >= 502 && response.status <= 504);
        if (transient && options.retry) {
          const error = await problem(response);
          setFailing(who, response.status !== 429);
          const wait = error.retryAfter !== null ? Math.min(error.retryAfter * 1000, 60000) : delay;
          await sleep(wait, this.signal);
          delay = nextBackoff(delay);
          continue;
        }
        setFailing(who, false);
        return await decode<T>(response);
      }
    } finally {
      setFailing(who, false);
    }
  }

  // The routes this client uses, as the contract names them.

  me(): Promise<Me> {
    return this.request("GET", "/me", { retry: true });
  }

  friends(): Promise<Friend[]> {
    return this.request("GET", "/friends", { retry: true });
  }

  requests(): Promise<{ jid: string }[]> {
    return this.request("GET", "/friends/requests", { retry: true });
  }

  addFriend(jid: string): Promise<{ jid: string; subscription: Subscription; ask: "subscribe" | null }> {
    return this.request("POST", "/friends", { body: { jid } });
  }

  removeFriend(jid: string): Promise<void> {
    return this.request("DELETE", `/friends/${encodeURIComponent(jid)}`);
  }

  history(peer: string, before: string | null): Promise<HistoryPage> {
    const query = new URLSearchParams({ with: peer, limit: "50" });
    if (before !== null) query.set("before", before);
    return this.request("GET", `/messages?${query}`, { retry: true });
  }

  sendMessage(to: string, body: string, key: string, url: string | null): Promise<{ id: string; state: SendState }> {
    return this.request("POST", "/messages", {
      body: url === null ? { to, body } : { to, body, url },
      headers: { "Idempotency-Key": key },
      retry: true,
    });
  }

  rooms(): Promise<Room[]> {
    return this.request("GET", "/rooms", { retry: true });
  }

  /** Joins a room (creating it if it does not exist) and bookmarks it. */
  joinRoom(jid: string, nick: string | null): Promise<Room> {
    return this.request("POST", "/rooms", { body: nick === null ? { jid } : { jid, nick } });
  }

  /** Leaves a room and removes its bookmark. */
  leaveRoom(jid: string): Promise<void> {
    return this.request("DELETE", `/rooms/${encodeURIComponent(jid)}`);
  }

  roomHistory(room: string, before: string | null): Promise<RoomHistoryPage> {
    const query = new URLSearchParams({ limit: "50" });
    if (before !== null) query.set("before", before);
    return this.request("GET", `/rooms/${encodeURIComponent(room)}/messages?${query}`, { retry: true });
  }

  sendRoomMessage(room: string, body: string, key: string, url: string | null): Promise<{ id: string; state: string }> {
    return this.request("POST", `/rooms/${encodeURIComponent(room)}/messages`, {
      body: url === null ? { body } : { body, url },
      headers: { "Idempotency-Key": key },
      retry: true,
    });
  }

  /** Asks for an upload slot (XEP-0363) for a file. */
  requestUpload(filename: string, size: number, contentType: string): Promise<UploadSlot> {
    return this.request("POST", "/uploads", { body: { filename, size, content_type: contentType } });
  }

  /**
   * PUTs a file's bytes to an upload slot, on this origin (the same HTTP service as the
   * API), reporting progress. Rejects with ApiError on an HTTP error, NetworkError when
   * the connection breaks, Cancelled when `signal` (or the session) aborts.
   */
  putFile(
    slot: UploadSlot,
    file: Blob,
    contentType: string,
    onProgress: (loaded: number, total: number) => void,
    signal: AbortSignal,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const both = AbortSignal.any([signal, this.signal]);
      if (both.aborted) {
        reject(new Cancelled());
        return;
      }
      const xhr = new XMLHttpRequest();
      const onAbort = () => xhr.abort();
      both.addEventListener("abort", onAbort, { once: true });
      const done = () => both.removeEventListener("abort", onAbort);
      xhr.open("PUT", uploadTarget(slot));
      for (const [name, value] of Object.entries(slot.put_headers ?? {})) {
        // The browser refuses a few names (Cookie, Host…) by itself; skip Content-Type, set below.
        if (name.toLowerCase() !== "content-type") xhr.setRequestHeader(name, value);
      }
      xhr.setRequestHeader("Content-Type", contentType);
      xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
      xhr.onload = () => {
        done();
        if (xhr.status >= 200 && xhr.status < 300) {
          onProgress(file.size, file.size);
          resolve();
          return;
        }
        const text = xhr.responseText.trim().slice(0, 200);
        const code = xhr.status === 413 ? "file-too-large" : "";
        reject(new ApiError(xhr.status, code, xhr.statusText || `HTTP ${xhr.status}`, text || null, null));
      };
      xhr.onerror = xhr.ontimeout = () => {
        done();
        reject(new NetworkError("Cannot reach the server: the upload broke off"));
      };
      xhr.onabort = () => {
        done();
        reject(new Cancelled());
      };
      xhr.send(file);
    });
  }

  /** Ends the session at once, and revokes the token. */
  async logout(): Promise<void> {
    this.end();
    try {
      await send("POST", "/logout", {}, this.token, AbortSignal.timeout(5000));
    } catch {
      // Offline: the token stays valid on the server until it expires.
    }
  }
}

/** Where to PUT a slot's file: its path on this origin (put_url only if no path was given). */
function uploadTarget(slot: UploadSlot): string {
  if (typeof slot.put_path === "string" && slot.put_path.startsWith("/") && !slot.put_path.startsWith("//")) {
    return slot.put_path;
  }
  return slot.put_url;
}

async function send(
  method: string,
  path: string,
  options: RequestOptions,
  token: string | null,
  signal: AbortSignal,
): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json", ...options.headers };
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  // A request that hangs (a half-open connection) counts as a network error.
  const init: RequestInit = {
    method,
    headers,
    signal: AbortSignal.any([signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    cache: "no-store",
  };
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  try {
    return await fetch(API + path, init);
  } catch (error) {
    if (signal.aborted && !isTimeout(signal.reason)) throw new Cancelled();
    throw new NetworkError(`Cannot reach the server (${describe(error)})`);
  }
}

function isTimeout(reason: unknown): boolean {
  return reason instanceof DOMException && reason.name === "TimeoutError";
}

async function decode<T>(response: Response): Promise<T> {
  if (!response.ok) throw await problem(response);
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  return (text === "" ? undefined : JSON.parse(text)) as T;
}

// Routes that need no token.

export async function login(jid: string, password: string): Promise<LoginAnswer> {
  const response = await send(
    "POST",
    "/login",
    { body: { jid, password, label: "Web browser" } },
    null,
    AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  );
  return decode(response);
}

export async function register(username: string, password: string): Promise<{ jid: string }> {
  const response = await send("POST", "/register", { body: { username, password } }, null, AbortSignal.timeout(REQUEST_TIMEOUT_MS));
  return decode(response);
}
