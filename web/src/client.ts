// The signed-in client: its state (friends, requests, chats) and everything that
// changes it, from the user's actions and from the event stream. The view only reads
// the state and calls these methods.

import { ApiError, Cancelled, describe, type Friend, type Session, type Show, type Subscription } from "./api.ts";
import { type MessageEvent, runEventStream, type ServerEvent } from "./events.ts";
import { bare, resource, uuid } from "./util.ts";

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
  body: string;
  timestamp: string;
  outgoing: boolean;
  state: MessageState;
  error: string | null;
  /** Its id in the archive, once a history page listed it: the `before` cursor. */
  archiveId: string | null;
  /** Sent from this page. */
  local: boolean;
  /** A `message` event told of it (a carbon of our own send). */
  echoed: boolean;
}

export interface Chat {
  messages: ChatMessage[];
  /** The first history page has been merged in. */
  loaded: boolean;
  /** Nothing older is left on the server. */
  complete: boolean;
  loadingOlder: boolean;
  unread: number;
}

export interface Contact {
  jid: string;
  name: string | null;
  subscription: Subscription;
  ask: "subscribe" | null;
  /** In the roster (false for someone who only wrote to us). */
  friend: boolean;
  /** The list's summary, used until presence arrives per resource. */
  base: { presence: Show; status: string | null };
  resources: Record<string, { presence: Show; status: string | null }>;
}

export interface State {
  contacts: Record<string, Contact>;
  requests: string[];
  chats: Record<string, Chat>;
  active: string | null;
  error: string | null;
  notice: string | null;
}

const RANK: Record<Show, number> = { chat: 5, available: 4, dnd: 3, away: 2, xa: 1, unavailable: 0 };

/** The presence to show for a contact: its most available resource. */
export function presenceOf(contact: Contact): { presence: Show; status: string | null } {
  let best = contact.base;
  const resources = Object.values(contact.resources);
  if (resources.length > 0) {
    best = { presence: "unavailable", status: null };
    for (const r of resources) if (RANK[r.presence] > RANK[best.presence]) best = r;
  }
  return best;
}

function emptyChat(): Chat {
  return { messages: [], loaded: false, complete: false, loadingOlder: false, unread: 0 };
}

export interface Stored {
  token: string;
  jid: string;
  cursor: string | null;
}

const STORAGE_KEY = "outpost.session";

export function loadStored(): Stored | null {
  try {
    const value = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null") as Partial<Stored> | null;
    if (value && typeof value.token === "string" && typeof value.jid === "string") {
      return { token: value.token, jid: value.jid, cursor: typeof value.cursor === "string" ? value.cursor : null };
    }
  } catch {
    // A corrupt entry: start signed out.
  }
  return null;
}

export function saveStored(value: Stored | null): void {
  try {
    if (value === null) localStorage.removeItem(STORAGE_KEY);
    else localStorage.setItem(STORAGE_KEY, JSON.stringify(value));
  } catch {
    // Storage disabled: the session lasts as long as the page.
  }
}

export class Client {
  state: State = { contacts: {}, requests: [], chats: {}, active: null, error: null, notice: null };
  readonly me: string;
  private readonly listeners = new Set<() => void>();
  /** Receipts whose message id is not known yet (one may beat the send's answer). */
  private readonly receipts = new Set<string>();
  private readonly sending = new Set<string>();

  constructor(
    readonly session: Session,
    /** Where the event stream resumes: the last event id a previous page saw. */
    private readonly cursor: string | null,
    private readonly saveCursor: (cursor: string | null) => void,
  ) {
    this.me = bare(session.jid);
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private set(change: Partial<State>): void {
    this.state = { ...this.state, ...change };
    for (const listener of this.listeners) listener();
  }

  private setChat(peer: string, change: (chat: Chat) => Partial<Chat>): void {
    const chat = this.state.chats[peer] ?? emptyChat();
    this.set({ chats: { ...this.state.chats, [peer]: { ...chat, ...change(chat) } } });
  }

  private setContact(jid: string, change: (contact: Contact) => Partial<Contact>): void {
    const contact = this.state.contacts[jid] ?? {
      jid,
      name: null,
      subscription: "none",
      ask: null,
      friend: false,
      base: { presence: "unavailable", status: null },
      resources: {},
    };
    this.set({ contacts: { ...this.state.contacts, [jid]: { ...contact, ...change(contact) } } });
  }

  /** Shows an error unless it only means the session ended. */
  fail(error: unknown): void {
    if (error instanceof Cancelled || this.session.ended) return;
    this.set({ error: describe(error) });
  }

  dismiss(): void {
    this.set({ error: null, notice: null });
  }

  start(): void {
    void runEventStream(
      this.session,
      this.cursor,
      this.saveCursor,
      {
        onOpen: () => this.resync(),
        onEvent: (event) => this.apply(event),
        onCursorLost: () => {},
      },
    ).catch((error: unknown) => this.fail(error));
    document.addEventListener("visibilitychange", this.onVisible);
  }

  stop(): void {
    document.removeEventListener("visibilitychange", this.onVisible);
    this.session.end();
  }

  private readonly onVisible = () => {
    if (!document.hidden && this.state.active !== null) this.setChat(this.state.active, () => ({ unread: 0 }));
  };

  /** Fetches the snapshots: on each (re)connection, since presence is not replayed. */
  private resync(): void {
    this.session
      .friends()
      .then((friends) => this.setFriends(friends))
      .catch((error: unknown) => this.fail(error));
    this.session
      .requests()
      .then((requests) => {
        this.set({ requests: requests.map((r) => bare(r.jid)) });
        for (const jid of this.state.requests) this.maybeAutoAccept(jid);
      })
      .catch((error: unknown) => this.fail(error));
    const active = this.state.active;
    if (active !== null && this.state.chats[active]?.loaded) this.loadNewest(active);
  }

  private setFriends(friends: Friend[]): void {
    const contacts: Record<string, Contact> = {};
    // Keep people who wrote to us without being friends, so their chats stay listed.
    for (const [jid, contact] of Object.entries(this.state.contacts)) {
      if (!contact.friend) contacts[jid] = contact;
    }
    for (const f of friends) {
      const jid = bare(f.jid);
      contacts[jid] = {
        jid,
        name: f.name,
        subscription: f.subscription,
        ask: f.ask,
        friend: true,
        base: { presence: f.presence, status: f.status },
        resources: {},
      };
    }
    this.set({ contacts });
    for (const jid of this.state.requests) this.maybeAutoAccept(jid);
  }

  private apply(event: ServerEvent): void {
    switch (event.type) {
      case "message":
        this.onMessage(event.data);
        break;
      case "presence": {
        const jid = bare(event.data.from);
        if (jid === this.me) break;
        const res = resource(event.data.from);
        const { presence, status } = event.data;
        this.setContact(jid, (c) => {
          const resources = { ...c.resources };
          if (presence === "unavailable") delete resources[res];
          else resources[res] = { presence, status: status ?? null };
          // With no resource left, the contact is offline, whatever the list said.
          return { resources, base: { presence: "unavailable", status: presence === "unavailable" ? (status ?? null) : null } };
        });
        break;
      }
      case "roster": {
        const jid = bare(event.data.jid);
        if (event.data.subscription === "remove") {
          const contacts = { ...this.state.contacts };
          const contact = contacts[jid];
          // Keep a chat's contact listed while it has messages, but no longer as a friend.
          if (contact && (this.state.chats[jid]?.messages.length ?? 0) > 0) {
            contacts[jid] = { ...contact, friend: false, subscription: "none", ask: null };
          } else {
            delete contacts[jid];
          }
          this.set({ contacts });
        } else {
          const { name, subscription, ask } = event.data;
          this.setContact(jid, () => ({ name, subscription, ask, friend: true }));
        }
        break;
      }
      case "subscription": {
        const jid = bare(event.data.from);
        if (event.data.type === "subscribe") {
          if (!this.state.requests.includes(jid)) this.set({ requests: [...this.state.requests, jid] });
          this.maybeAutoAccept(jid);
        } else if (event.data.type === "unsubscribe") {
          // A request withdrawn before we answered it.
          this.set({ requests: this.state.requests.filter((r) => r !== jid) });
        }
        break;
      }
      case "receipt":
        this.onReceipt(event.data.id);
        break;
    }
  }

  /** A request from someone we asked ourselves is the answer to our own: approve it. */
  private maybeAutoAccept(jid: string): void {
    const contact = this.state.contacts[jid];
    if (!this.state.requests.includes(jid)) return;
    if (contact?.friend && (contact.ask === "subscribe" || contact.subscription === "to")) this.accept(jid);
  }

  private onMessage(m: MessageEvent): void {
    if (m.type === "groupchat" || m.type === "error" || !m.body) return;
    const outgoing = m.carbon === "sent" || bare(m.from) === this.me;
    const peer = bare(outgoing ? m.to : m.from);
    if (!this.state.contacts[peer]) this.setContact(peer, () => ({}));
    const item: ChatMessage = {
      key: m.id,
      ids: [m.id],
      from: m.from,
      to: m.to,
      body: m.body,
      timestamp: m.timestamp,
      outgoing,
      state: outgoing ? "sent" : "incoming",
      error: null,
      archiveId: null,
      local: false,
      echoed: true,
    };
    const messages = this.state.chats[peer]?.messages ?? [];
    if (messages.some((x) => x.ids.includes(m.id) || x.key === m.id)) return;
    // A carbon of a send from this page may come before the send's answer, and its
    // id need not be the answer's: match it by body.
    const own = outgoing ? messages.find((x) => x.local && !x.echoed && x.body === m.body) : undefined;
    if (own) {
      this.updateMessage(peer, own.key, (x) => ({ ids: [...x.ids, m.id], echoed: true }));
      return;
    }
    const counts = !outgoing && (this.state.active !== peer || document.hidden);
    this.setChat(peer, (chat) => ({
      messages: insertBeforePending(chat.messages, [item]),
      unread: chat.unread + (counts ? 1 : 0),
    }));
  }

  private onReceipt(id: string): void {
    for (const [peer, chat] of Object.entries(this.state.chats)) {
      if (chat.messages.some((m) => m.outgoing && (m.ids.includes(id) || m.key === id))) {
        this.setChat(peer, (c) => ({
          messages: c.messages.map((m) =>
            m.outgoing && (m.ids.includes(id) || m.key === id) ? { ...m, state: "received" } : m,
          ),
        }));
        return;
      }
    }
    this.receipts.add(id);
  }

  // -------------------------------------------------------------------------------
  // Chats

  openChat(peer: string): void {
    this.set({ active: peer });
    this.setChat(peer, () => ({ unread: 0 }));
    if (!this.state.chats[peer]?.loaded) this.loadNewest(peer);
  }

  private loadNewest(peer: string): void {
    this.session
      .history(peer, null)
      .then((page) => {
        this.setChat(peer, (chat) => ({
          messages: merge(chat.messages, page.messages.map((m) => this.fromArchive(m)), chat.loaded ? "gap" : "newest"),
          complete: chat.loaded ? chat.complete : page.complete,
          loaded: true,
        }));
      })
      .catch((error: unknown) => this.fail(error));
  }

  loadOlder(peer: string): void {
    const chat = this.state.chats[peer];
    if (!chat || !chat.loaded || chat.complete || chat.loadingOlder) return;
    const before = chat.messages.find((m) => m.archiveId !== null)?.archiveId;
    if (before === undefined || before === null) return;
    this.setChat(peer, () => ({ loadingOlder: true }));
    this.session
      .history(peer, before)
      .then((page) => {
        this.setChat(peer, (c) => ({
          messages: merge(c.messages, page.messages.map((m) => this.fromArchive(m)), "older"),
          complete: page.complete,
          loadingOlder: false,
        }));
      })
      .catch((error: unknown) => {
        this.setChat(peer, () => ({ loadingOlder: false }));
        this.fail(error);
      });
  }

  private fromArchive(m: { id: string; from: string; to: string; body: string; timestamp: string }): ChatMessage {
    const outgoing = bare(m.from) === this.me;
    return {
      key: m.id,
      ids: [m.id],
      from: m.from,
      to: m.to,
      body: m.body,
      timestamp: m.timestamp,
      outgoing,
      state: outgoing ? (this.receipts.has(m.id) ? "received" : "sent") : "incoming",
      error: null,
      archiveId: m.id,
      local: false,
      echoed: false,
    };
  }

  send(peer: string, body: string): void {
    const key = uuid();
    const message: ChatMessage = {
      key,
      ids: [],
      from: this.session.jid,
      to: peer,
      body,
      timestamp: new Date().toISOString(),
      outgoing: true,
      state: "sending",
      error: null,
      archiveId: null,
      local: true,
      echoed: false,
    };
    this.setChat(peer, (chat) => ({ messages: [...chat.messages, message] }));
    this.deliver(peer, key);
  }

  /** Sends a failed message again with the same Idempotency-Key. */
  retry(peer: string, key: string): void {
    this.updateMessage(peer, key, () => ({ state: "sending", error: null }));
    this.deliver(peer, key);
  }

  private deliver(peer: string, key: string): void {
    const message = this.state.chats[peer]?.messages.find((m) => m.key === key);
    if (!message || this.sending.has(key)) return;
    this.sending.add(key);
    this.session
      .sendMessage(peer, message.body, key)
      .then((answer) => {
        const acked = this.receipts.has(answer.id) || this.receipts.has(key);
        this.updateMessage(peer, key, (m) => ({
          ids: m.ids.includes(answer.id) ? m.ids : [...m.ids, answer.id],
          state: acked || m.state === "received" ? "received" : answer.state,
        }));
      })
      .catch((error: unknown) => {
        if (error instanceof Cancelled) return;
        this.updateMessage(peer, key, () => ({ state: "failed", error: describe(error) }));
      })
      .finally(() => this.sending.delete(key));
  }

  private updateMessage(peer: string, key: string, change: (m: ChatMessage) => Partial<ChatMessage>): void {
    this.setChat(peer, (chat) => ({
      messages: chat.messages.map((m) => (m.key === key ? { ...m, ...change(m) } : m)),
    }));
  }

  // -------------------------------------------------------------------------------
  // Friends

  async addFriend(input: string): Promise<boolean> {
    const jid = bare(input.trim());
    if (jid === "") return false;
    if (jid === this.me) {
      this.set({ error: "That is your own address." });
      return false;
    }
    try {
      const answer = await this.session.addFriend(jid);
      this.applyAnswer(answer);
      this.set({ notice: `Friend request sent to ${answer.jid}.` });
      return true;
    } catch (error) {
      this.fail(error);
      return false;
    }
  }

  accept(jid: string): void {
    this.set({ requests: this.state.requests.filter((r) => r !== jid) });
    this.session
      .addFriend(jid)
      .then((answer) => this.applyAnswer(answer))
      .catch((error: unknown) => {
        this.fail(error);
        this.restoreRequest(jid);
      });
  }

  /**
   * Shows a new friend at once from POST /friends's answer. An entry already listed
   * is left to the roster events: they may have overtaken this answer.
   */
  private applyAnswer(answer: { jid: string; subscription: Subscription; ask: "subscribe" | null }): void {
    const jid = bare(answer.jid);
    if (this.state.contacts[jid]?.friend) return;
    this.setContact(jid, () => ({ subscription: answer.subscription, ask: answer.ask, friend: true }));
  }

  refuse(jid: string): void {
    this.set({ requests: this.state.requests.filter((r) => r !== jid) });
    this.session.removeFriend(jid).catch((error: unknown) => {
      // 404: the request is gone already, which is what refusing wanted.
      if (error instanceof ApiError && error.status === 404) return;
      this.fail(error);
      this.restoreRequest(jid);
    });
  }

  private restoreRequest(jid: string): void {
    if (!this.session.ended && !this.state.requests.includes(jid)) this.set({ requests: [...this.state.requests, jid] });
  }

  async removeFriend(jid: string): Promise<void> {
    try {
      await this.session.removeFriend(jid);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) {
        this.fail(error);
        return;
      }
    }
    const contacts = { ...this.state.contacts };
    delete contacts[jid];
    const chats = { ...this.state.chats };
    delete chats[jid];
    this.set({ contacts, chats, active: this.state.active === jid ? null : this.state.active });
  }
}

function isPending(m: ChatMessage): boolean {
  return m.state === "sending" || m.state === "failed";
}

/** Where our unanswered sends start, at the end of a chat. */
function pendingStart(messages: ChatMessage[]): number {
  let at = messages.length;
  while (at > 0 && isPending(messages[at - 1]!)) at--;
  return at;
}

/** Appends, but keeps our unanswered sends last. */
function insertBeforePending(messages: ChatMessage[], items: ChatMessage[]): ChatMessage[] {
  const at = pendingStart(messages);
  return [...messages.slice(0, at), ...items, ...messages.slice(at)];
}

/**
 * Merges a history page (oldest first) into a chat. A page item already shown (the
 * same id; or, since ids may differ between an event or a send's answer and the
 * archive, a message not yet archived with the same direction and body) is merged
 * into it. The others go next to the shown messages they follow in the page; with
 * none, before everything (`older`, and `newest` for a chat's first page) or after
 * it (`gap`: a refresh after reconnecting).
 */
function merge(existing: ChatMessage[], page: ChatMessage[], where: "older" | "newest" | "gap"): ChatMessage[] {
  const messages = [...existing];
  const claimed = new Set<number>();
  const matched = page.map((item) => {
    const id = item.archiveId!;
    let at = messages.findIndex((m, i) => !claimed.has(i) && (m.ids.includes(id) || m.key === id));
    if (at < 0) {
      at = messages.findIndex(
        (m, i) =>
          !claimed.has(i) && m.archiveId === null && m.outgoing === item.outgoing && m.body === item.body && !isPending(m),
      );
    }
    if (at < 0) return null;
    claimed.add(at);
    const m = messages[at]!;
    messages[at] = { ...m, ids: m.ids.includes(id) ? m.ids : [...m.ids, id], archiveId: id, timestamp: item.timestamp };
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
