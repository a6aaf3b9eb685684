// The signed-in client: its state (friends, requests, chats, rooms, uploads) and
// everything that changes it, from the user's actions and from the event stream. The
// view only reads the state and calls these methods.

import {
  ApiError,
  type ArchivedMessage,
  Cancelled,
  describe,
  type Friend,
  type Occupant,
  type Room,
  type RoomArchivedMessage,
  type Session,
  type Show,
  type Subscription,
} from "./api.ts";
import { type GroupchatEvent, type MessageEvent, type OccupantEvent, runEventStream, type ServerEvent } from "./events.ts";
import { addLive, type ChatMessage, merge, type MessageState, settleSend } from "./messages.ts";
import { bare, contentType, localPart, resource, roomAddress, uuid } from "./util.ts";

export type { ChatMessage, MessageState };

/** A conversation: one-to-one with a contact, or in a room. */
export type Kind = "chat" | "room";

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

/** A room we are in, or have bookmarked. */
export interface RoomState {
  jid: string;
  name: string | null;
  /** Our nickname in it. */
  nick: string;
  joined: boolean;
  subject: string | null;
  /** By nickname. */
  occupants: Record<string, Occupant>;
  chat: Chat;
  /** A join is under way. */
  joining: boolean;
}

/** A file on its way to a conversation: asking for a slot, then PUTting it. */
export interface Upload {
  id: string;
  kind: Kind;
  to: string;
  filename: string;
  size: number;
  loaded: number;
  state: "uploading" | "failed";
  error: string | null;
}

export interface State {
  /** What the server offers (GET /me); null until known. */
  service: { rooms: string | null; upload: boolean } | null;
  contacts: Record<string, Contact>;
  requests: string[];
  chats: Record<string, Chat>;
  rooms: Record<string, RoomState>;
  /** The open one-to-one chat (at most one of active and activeRoom is set). */
  active: string | null;
  activeRoom: string | null;
  uploads: Upload[];
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

export function emptyChat(): Chat {
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
  state: State = {
    service: null,
    contacts: {},
    requests: [],
    chats: {},
    rooms: {},
    active: null,
    activeRoom: null,
    uploads: [],
    error: null,
    notice: null,
  };
  readonly me: string;
  private readonly listeners = new Set<() => void>();
  /** Receipts whose message id is not known yet (one may beat the send's answer). */
  private readonly receipts = new Set<string>();
  private readonly sending = new Set<string>();
  private readonly uploadAborts = new Map<string, AbortController>();
  /** Whether GET /rooms has answered once: until then a room's messages wait here. */
  private roomsKnown = false;
  private earlyRoomMessages: GroupchatEvent[] = [];

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

  private setRoom(jid: string, change: (room: RoomState) => Partial<RoomState>): void {
    const room = this.state.rooms[jid];
    if (!room) return;
    this.set({ rooms: { ...this.state.rooms, [jid]: { ...room, ...change(room) } } });
  }

  /** A conversation's messages and paging, whichever its kind. */
  chatOf(kind: Kind, jid: string): Chat | undefined {
    return kind === "room" ? this.state.rooms[jid]?.chat : this.state.chats[jid];
  }

  private setConversation(kind: Kind, jid: string, change: (chat: Chat) => Partial<Chat>): void {
    if (kind === "room") this.setRoom(jid, (room) => ({ chat: { ...room.chat, ...change(room.chat) } }));
    else this.setChat(jid, change);
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
    for (const abort of this.uploadAborts.values()) abort.abort();
    this.session.end();
  }

  private readonly onVisible = () => {
    if (document.hidden) return;
    if (this.state.active !== null) this.setChat(this.state.active, () => ({ unread: 0 }));
    if (this.state.activeRoom !== null) this.setConversation("room", this.state.activeRoom, () => ({ unread: 0 }));
  };

  /** Fetches the snapshots: on each (re)connection, since presence is not replayed. */
  private resync(): void {
    this.session
      .me()
      .then((me) => this.set({ service: { rooms: me.rooms_service ?? null, upload: me.upload !== false } }))
      .catch((error: unknown) => this.fail(error));
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
    this.session
      .rooms()
      .then((rooms) => this.setRooms(rooms))
      .catch((error: unknown) => this.fail(error));
    const active = this.state.active;
    if (active !== null && this.state.chats[active]?.loaded) this.loadNewest("chat", active);
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
      case "groupchat":
        this.onGroupchat(event.data);
        break;
      case "occupant":
        this.onOccupant(event.data);
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
      // The message's id, and the archive's (the history's) when there is one.
      ids: m.stanza_id ? [m.id, m.stanza_id] : [m.id],
      from: m.from,
      to: m.to,
      nick: null,
      body: m.body,
      url: m.url ?? null,
      timestamp: m.timestamp,
      outgoing,
      state: outgoing ? "sent" : "incoming",
      error: null,
      archiveId: null,
      local: false,
      echoed: true,
    };
    const messages = this.state.chats[peer]?.messages ?? [];
    const next = addLive(messages, item);
    if (next === null) return;
    const counts = next.length > messages.length && !outgoing && (this.state.active !== peer || document.hidden);
    this.setChat(peer, (chat) => ({ messages: next, unread: chat.unread + (counts ? 1 : 0) }));
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
  // Conversations, of either kind

  openChat(peer: string): void {
    this.set({ active: peer, activeRoom: null });
    this.setChat(peer, () => ({ unread: 0 }));
    if (!this.state.chats[peer]?.loaded) this.loadNewest("chat", peer);
  }

  openRoom(jid: string): void {
    if (!this.state.rooms[jid]) return;
    this.set({ active: null, activeRoom: jid });
    this.setConversation("room", jid, () => ({ unread: 0 }));
    if (!this.state.rooms[jid]?.chat.loaded) this.loadNewest("room", jid);
  }

  private async historyPage(kind: Kind, jid: string, before: string | null): Promise<{ messages: ChatMessage[]; complete: boolean }> {
    if (kind === "room") {
      const page = await this.session.roomHistory(jid, before);
      return { messages: page.messages.map((m) => this.fromRoomArchive(jid, m)), complete: page.complete };
    }
    const page = await this.session.history(jid, before);
    return { messages: page.messages.map((m) => this.fromArchive(m)), complete: page.complete };
  }

  private loadNewest(kind: Kind, jid: string): void {
    this.historyPage(kind, jid, null)
      .then((page) => {
        this.setConversation(kind, jid, (chat) => ({
          messages: merge(chat.messages, page.messages, chat.loaded ? "gap" : "newest"),
          complete: chat.loaded ? chat.complete : page.complete,
          loaded: true,
        }));
      })
      .catch((error: unknown) => this.fail(error));
  }

  loadOlder(kind: Kind, jid: string): void {
    const chat = this.chatOf(kind, jid);
    if (!chat || !chat.loaded || chat.complete || chat.loadingOlder) return;
    const before = chat.messages.find((m) => m.archiveId !== null)?.archiveId;
    if (before === undefined || before === null) return;
    this.setConversation(kind, jid, () => ({ loadingOlder: true }));
    this.historyPage(kind, jid, before)
      .then((page) => {
        this.setConversation(kind, jid, (c) => ({
          messages: merge(c.messages, page.messages, "older"),
          complete: page.complete,
          loadingOlder: false,
        }));
      })
      .catch((error: unknown) => {
        this.setConversation(kind, jid, () => ({ loadingOlder: false }));
        this.fail(error);
      });
  }

  private fromArchive(m: ArchivedMessage): ChatMessage {
    const outgoing = bare(m.from) === this.me;
    return {
      key: m.id,
      // The archive's id, and the message's own (the events' and our send's answer's).
      ids: m.message_id ? [m.id, m.message_id] : [m.id],
      from: m.from,
      to: m.to,
      nick: null,
      body: m.body,
      url: m.url ?? null,
      timestamp: m.timestamp,
      outgoing,
      state: outgoing ? (this.receipts.has(m.id) ? "received" : "sent") : "incoming",
      error: null,
      archiveId: m.id,
      local: false,
      echoed: false,
    };
  }

  private fromRoomArchive(room: string, m: RoomArchivedMessage): ChatMessage {
    const outgoing = m.nick === this.state.rooms[room]?.nick;
    return {
      key: m.id,
      // The archive's id, and the message's own (the events' and our send's answer's).
      ids: m.message_id ? [m.id, m.message_id] : [m.id],
      from: m.from,
      to: room,
      nick: m.nick,
      body: m.body,
      url: m.url ?? null,
      timestamp: m.timestamp,
      outgoing,
      state: outgoing ? "sent" : "incoming",
      error: null,
      archiveId: m.id,
      local: false,
      echoed: false,
    };
  }

  /** Sends a message, with a shared file's URL (XEP-0066) when `url` is given. */
  send(kind: Kind, to: string, body: string, url: string | null = null): void {
    const key = uuid();
    const message: ChatMessage = {
      key,
      ids: [],
      from: this.session.jid,
      to,
      nick: kind === "room" ? (this.state.rooms[to]?.nick ?? null) : null,
      body,
      url,
      timestamp: new Date().toISOString(),
      outgoing: true,
      state: "sending",
      error: null,
      archiveId: null,
      local: true,
      echoed: false,
    };
    this.setConversation(kind, to, (chat) => ({ messages: [...chat.messages, message] }));
    this.deliver(kind, to, key);
  }

  /** Sends a failed message again with the same Idempotency-Key. */
  retry(kind: Kind, to: string, key: string): void {
    this.updateMessage(kind, to, key, () => ({ state: "sending", error: null }));
    this.deliver(kind, to, key);
  }

  private deliver(kind: Kind, to: string, key: string): void {
    const message = this.chatOf(kind, to)?.messages.find((m) => m.key === key);
    if (!message || this.sending.has(key)) return;
    this.sending.add(key);
    const sent =
      kind === "room"
        ? this.session.sendRoomMessage(to, message.body, key, message.url)
        : this.session.sendMessage(to, message.body, key, message.url);
    sent
      .then((answer) => {
        const acked = this.receipts.has(answer.id) || this.receipts.has(key);
        this.setConversation(kind, to, (chat) => ({
          messages: settleSend(chat.messages, key, answer.id, (m) =>
            acked || m.state === "received" ? "received" : sendState(answer.state),
          ),
        }));
      })
      .catch((error: unknown) => {
        if (error instanceof Cancelled) return;
        let text = describe(error);
        if (kind === "room" && error instanceof ApiError && (error.code === "not-joined" || error.status === 409)) {
          text = "You are not in this room";
          this.setRoom(to, () => ({ joined: false }));
        }
        this.updateMessage(kind, to, key, () => ({ state: "failed", error: text }));
      })
      .finally(() => this.sending.delete(key));
  }

  private updateMessage(kind: Kind, to: string, key: string, change: (m: ChatMessage) => Partial<ChatMessage>): void {
    this.setConversation(kind, to, (chat) => ({
      messages: chat.messages.map((m) => (m.key === key ? { ...m, ...change(m) } : m)),
    }));
  }

  // -------------------------------------------------------------------------------
  // Rooms

  private roomFrom(room: Room, before: RoomState | undefined): RoomState {
    const occupants: Record<string, Occupant> = {};
    for (const o of room.occupants ?? []) if (o.presence !== "unavailable") occupants[o.nick] = o;
    return {
      jid: bare(room.jid),
      name: room.name ?? null,
      nick: room.nick,
      joined: room.joined,
      subject: room.subject ?? null,
      occupants,
      chat: before?.chat ?? emptyChat(),
      joining: false,
    };
  }

  /** The room list's snapshot: rooms no longer listed are gone, unless being joined. */
  private setRooms(list: Room[]): void {
    const rooms: Record<string, RoomState> = {};
    for (const [jid, room] of Object.entries(this.state.rooms)) if (room.joining) rooms[jid] = room;
    for (const r of list) {
      const jid = bare(r.jid);
      if (rooms[jid]?.joining) continue;
      rooms[jid] = this.roomFrom(r, this.state.rooms[jid]);
    }
    const activeRoom = this.state.activeRoom !== null && rooms[this.state.activeRoom] ? this.state.activeRoom : null;
    this.set({ rooms, activeRoom });
    if (activeRoom !== null && rooms[activeRoom]!.chat.loaded) this.loadNewest("room", activeRoom);
    // Messages the stream replayed before the list came (a page reopened).
    this.roomsKnown = true;
    const early = this.earlyRoomMessages;
    this.earlyRoomMessages = [];
    for (const d of early) this.onGroupchat(d);
  }

  /**
   * Joins a room: `input` is its address, or a bare name in our server's conference
   * service; the nickname defaults to our JID's local part. Opens it once joined.
   * Returns null, or the error to show.
   */
  async joinRoom(input: string, nickInput: string): Promise<string | null> {
    const jid = roomAddress(input, this.me, this.state.service?.rooms ?? null);
    if (jid === "") return "Type a room's address or name.";
    const nick = nickInput.trim() || localPart(this.me) || "guest";
    const known = this.state.rooms[jid];
    if (known?.joined && (nickInput.trim() === "" || nick === known.nick)) {
      this.openRoom(jid);
      return null;
    }
    if (known?.joining) return null;
    const placeholder: RoomState = known
      ? { ...known, joining: true }
      : { jid, name: null, nick, joined: false, subject: null, occupants: {}, chat: emptyChat(), joining: true };
    this.set({ rooms: { ...this.state.rooms, [jid]: placeholder } });
    try {
      const room = await this.session.joinRoom(jid, nick);
      const key = bare(room.jid);
      const rooms = { ...this.state.rooms };
      const before = rooms[jid];
      if (key !== jid) delete rooms[jid];
      rooms[key] = this.roomFrom(room, before);
      // Occupant events may have come before the answer: keep those the snapshot lacks.
      if (before) rooms[key] = { ...rooms[key]!, occupants: { ...before.occupants, ...rooms[key]!.occupants } };
      this.set({ rooms });
      this.openRoom(key);
      return null;
    } catch (error) {
      if (error instanceof Cancelled || this.session.ended) return null;
      if (known) this.setRoom(jid, () => ({ joining: false }));
      else {
        const rooms = { ...this.state.rooms };
        delete rooms[jid];
        this.set({ rooms, activeRoom: this.state.activeRoom === jid ? null : this.state.activeRoom });
      }
      return joinError(error);
    }
  }

  /** Joins again a bookmarked room we are not in, with the same nickname. */
  rejoin(jid: string): void {
    const room = this.state.rooms[jid];
    if (!room) return;
    void this.joinRoom(jid, room.nick).then((error) => {
      if (error !== null) this.set({ error });
    });
  }

  async leaveRoom(jid: string): Promise<void> {
    try {
      await this.session.leaveRoom(jid);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) {
        this.fail(error);
        return;
      }
    }
    for (const u of this.state.uploads) if (u.kind === "room" && u.to === jid) this.dismissUpload(u.id);
    const rooms = { ...this.state.rooms };
    delete rooms[jid];
    this.set({ rooms, activeRoom: this.state.activeRoom === jid ? null : this.state.activeRoom });
  }

  private onGroupchat(d: GroupchatEvent): void {
    const jid = bare(d.room || d.from);
    const room = this.state.rooms[jid];
    if (!room) {
      if (!this.roomsKnown && this.earlyRoomMessages.length < 1000) this.earlyRoomMessages.push(d);
      return;
    }
    if (typeof d.subject === "string") this.setRoom(jid, () => ({ subject: d.subject || null }));
    if (!d.body) return;
    const outgoing = d.nick === room.nick;
    const item: ChatMessage = {
      key: d.id,
      // The message's id, and the archive's (the history's) when the room gave one.
      ids: d.stanza_id ? [d.id, d.stanza_id] : [d.id],
      from: d.from,
      to: jid,
      nick: d.nick,
      body: d.body,
      url: d.url ?? null,
      timestamp: d.timestamp,
      outgoing,
      state: outgoing ? "sent" : "incoming",
      error: null,
      archiveId: null,
      local: false,
      echoed: true,
    };
    const messages = this.state.rooms[jid]!.chat.messages;
    const next = addLive(messages, item);
    if (next === null) return;
    const counts = next.length > messages.length && !outgoing && (this.state.activeRoom !== jid || document.hidden);
    this.setConversation("room", jid, (chat) => ({ messages: next, unread: chat.unread + (counts ? 1 : 0) }));
  }

  private onOccupant(d: OccupantEvent): void {
    const jid = bare(d.room || d.from);
    if (!this.state.rooms[jid]) return;
    this.setRoom(jid, (room) => {
      const occupants = { ...room.occupants };
      if (d.presence === "unavailable") {
        delete occupants[d.nick];
        // We left, were kicked, or the room went away.
        if (d.self && d.nick === room.nick) return { occupants: {}, joined: false };
        return { occupants };
      }
      occupants[d.nick] = {
        nick: d.nick,
        role: d.role,
        affiliation: d.affiliation,
        jid: d.jid ?? null,
        presence: d.presence,
      };
      return d.self ? { occupants, joined: true, nick: d.nick } : { occupants };
    });
  }

  // -------------------------------------------------------------------------------
  // Files (XEP-0363 through the API)

  /** Uploads a file, then sends its URL to the conversation. */
  upload(kind: Kind, to: string, file: File): void {
    const id = uuid();
    const type = contentType(file.name, file.type);
    const abort = new AbortController();
    this.uploadAborts.set(id, abort);
    const upload: Upload = {
      id,
      kind,
      to,
      filename: file.name,
      size: file.size,
      loaded: 0,
      state: "uploading",
      error: null,
    };
    this.set({ uploads: [...this.state.uploads, upload] });
    const change = (c: Partial<Upload>) =>
      this.set({ uploads: this.state.uploads.map((u) => (u.id === id ? { ...u, ...c } : u)) });
    void (async () => {
      try {
        const slot = await this.session.requestUpload(file.name, file.size, type);
        await this.session.putFile(slot, file, type, (loaded) => change({ loaded }), abort.signal);
        this.removeUpload(id);
        this.send(kind, to, slot.get_url, slot.get_url);
      } catch (error) {
        if (error instanceof Cancelled || this.session.ended) {
          this.removeUpload(id);
          return;
        }
        change({ state: "failed", error: uploadError(error) });
      } finally {
        this.uploadAborts.delete(id);
      }
    })();
  }

  /** Cancels an upload under way, or forgets a failed one. */
  dismissUpload(id: string): void {
    this.uploadAborts.get(id)?.abort();
    this.removeUpload(id);
  }

  private removeUpload(id: string): void {
    this.set({ uploads: this.state.uploads.filter((u) => u.id !== id) });
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
    const uploads = this.state.uploads.filter((u) => u.kind !== "chat" || u.to !== jid);
    this.set({ contacts, chats, uploads, active: this.state.active === jid ? null : this.state.active });
  }
}

/** The state a send's answer gives an outgoing message (a room's answer may say other words). */
function sendState(state: string): MessageState {
  return state === "delivered" || state === "stored" || state === "queued" ? state : "delivered";
}

const JOIN_ERRORS: Record<string, string> = {
  "bad-request": "That is not a room address",
  "400": "That is not a room address",
  forbidden: "You may not join this room (members only, or banned)",
  "403": "You may not join this room (members only, or banned)",
  conflict: "That nickname is in use in this room: choose another",
  "409": "That nickname is in use in this room: choose another",
  "not-found": "There is no such room, or no such service",
  "404": "There is no such room, or no such service",
};

/** What to tell a person whose join failed, by the API's error code (or status). */
export function joinError(error: unknown): string {
  if (error instanceof ApiError) {
    const text = JOIN_ERRORS[error.code] ?? JOIN_ERRORS[String(error.status)];
    if (text !== undefined) return error.detail ? `${text}: ${error.detail}` : `${text}.`;
  }
  return describe(error);
}

/** What to tell a person whose upload failed. */
export function uploadError(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.code === "quota-exceeded") {
      return error.detail ? `over your storage quota (${error.detail})` : "over your storage quota";
    }
    if (error.status === 413 || error.code === "file-too-large") {
      return error.detail ? `file too large (${error.detail})` : "file too large";
    }
    if (error.code === "unavailable" || error.status === 503) return "file sharing is not available on this server";
  }
  return describe(error);
}
