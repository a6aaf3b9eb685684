// The view. Elements a test needs carry `data-testid`; tests/e2e rely on those names.

import type { ComponentChildren } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { describe, login, type Occupant, register, Session, watchConnectivity } from "./api.ts";
import {
  type Chat,
  type ChatMessage,
  Client,
  type Contact,
  type Kind,
  loadStored,
  presenceOf,
  type RoomState,
  saveStored,
  type State,
  type Upload,
} from "./client.ts";
import { domainOf, fileName, fileSize, isImageUrl, localPart, safeUrl, shortTime } from "./util.ts";

export function App() {
  const [client, setClient] = useState<Client | null>(() => resume());
  const [notice, setNotice] = useState<string | null>(null);

  function resume(): Client | null {
    const stored = loadStored();
    return stored ? start(stored.token, stored.jid, stored.cursor) : null;
  }

  function start(token: string, jid: string, cursor: string | null): Client {
    const session = new Session(token, jid, () => {
      saveStored(null);
      setNotice("Your session has ended. Please log in again.");
      setClient(null);
    });
    return new Client(session, cursor, (next) => {
      if (!session.ended) saveStored({ token, jid, cursor: next });
    });
  }

  useEffect(() => {
    if (!client) return;
    client.start();
    return () => client.stop();
  }, [client]);

  if (!client) {
    return (
      <Welcome
        notice={notice}
        onLogin={(answer) => {
          saveStored({ token: answer.token, jid: answer.jid, cursor: null });
          setNotice(null);
          setClient(start(answer.token, answer.jid, null));
        }}
      />
    );
  }
  return (
    <Main
      client={client}
      onLogout={() => {
        saveStored(null);
        void client.session.logout();
        setClient(null);
      }}
    />
  );
}

// -----------------------------------------------------------------------------------
// Signed out

function Welcome(props: { notice: string | null; onLogin: (answer: { token: string; jid: string }) => void }) {
  return (
    <div class="welcome">
      <h1>Outpost</h1>
      {props.notice && <p class="notice">{props.notice}</p>}
      <div class="forms">
        <LoginForm onLogin={props.onLogin} />
        <RegisterForm onLogin={props.onLogin} />
      </div>
    </div>
  );
}

/** A form field's current text (read at submit: state may lag a just-typed value). */
function field(form: HTMLFormElement, name: string): string {
  const value = new FormData(form).get(name);
  return typeof value === "string" ? value : "";
}

function LoginForm(props: { onLogin: (answer: { token: string; jid: string }) => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <form
      class="card"
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        setBusy(true);
        setError(null);
        try {
          props.onLogin(await login(field(form, "jid").trim(), field(form, "password")));
        } catch (err) {
          setError(describe(err));
          setBusy(false);
        }
      }}
    >
      <h2>Log in</h2>
      <label>
        Address
        <input
          data-testid="login-jid"
          name="jid"
          type="text"
          autocomplete="username"
          placeholder="user@example.org"
          required
        />
      </label>
      <label>
        Password
        <input data-testid="login-password" name="password" type="password" autocomplete="current-password" required />
      </label>
      {error && (
        <p class="error" role="alert" data-testid="login-error">
          {error}
        </p>
      )}
      <button data-testid="login-submit" type="submit" disabled={busy}>
        Log in
      </button>
    </form>
  );
}

function RegisterForm(props: { onLogin: (answer: { token: string; jid: string }) => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  return (
    <form
      class="card"
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        setBusy(true);
        setError(null);
        try {
          const password = field(form, "password");
          const { jid } = await register(field(form, "username").trim(), password);
          props.onLogin(await login(jid, password));
        } catch (err) {
          setError(describe(err));
          setBusy(false);
        }
      }}
    >
      <h2>New account</h2>
      <label>
        Username
        <input data-testid="register-username" name="username" type="text" autocomplete="username" required />
      </label>
      <label>
        Password
        <input data-testid="register-password" name="password" type="password" autocomplete="new-password" required />
      </label>
      {error && (
        <p class="error" role="alert" data-testid="register-error">
          {error}
        </p>
      )}
      <button data-testid="register-submit" type="submit" disabled={busy}>
        Create account
      </button>
    </form>
  );
}

// -----------------------------------------------------------------------------------
// Signed in

function useClientState(client: Client): State {
  const [state, setState] = useState(client.state);
  useEffect(() => {
    setState(client.state);
    return client.subscribe(() => setState(client.state));
  }, [client]);
  return state;
}

function useOffline(): boolean {
  const [offline, setOffline] = useState(false);
  useEffect(() => watchConnectivity(setOffline), []);
  return offline;
}

function Main(props: { client: Client; onLogout: () => void }) {
  const { client } = props;
  const state = useClientState(client);
  const offline = useOffline();

  const unread =
    Object.values(state.chats).reduce((n, c) => n + c.unread, 0) +
    Object.values(state.rooms).reduce((n, r) => n + r.chat.unread, 0);
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) Outpost` : "Outpost";
  }, [unread]);

  const contacts = Object.values(state.contacts).sort(byName);
  const active = state.active !== null ? state.contacts[state.active] : undefined;
  const activeRoom = state.activeRoom !== null ? state.rooms[state.activeRoom] : undefined;
  return (
    <div class="main">
      {offline && (
        <div class="banner" role="status" data-testid="reconnecting-banner">
          Reconnecting…
        </div>
      )}
      <aside class="side">
        <header class="me">
          <span data-testid="me" title="Your address">
            {client.session.jid}
          </span>
          <button class="link" data-testid="logout" onClick={props.onLogout}>
            Log out
          </button>
        </header>
        <AddFriend client={client} />
        {state.requests.length > 0 && (
          <section class="requests">
            <h3>Friend requests</h3>
            {state.requests.map((jid) => (
              <div class="request" key={jid} data-testid={`request-${jid}`}>
                <span class="jid">{jid}</span>
                <button data-testid={`request-accept-${jid}`} onClick={() => client.accept(jid)}>
                  Accept
                </button>
                <button class="secondary" data-testid={`request-refuse-${jid}`} onClick={() => client.refuse(jid)}>
                  Refuse
                </button>
              </div>
            ))}
          </section>
        )}
        <nav class="friends" data-testid="friend-list">
          {contacts.length === 0 && <p class="empty">No friends yet: add one by address.</p>}
          {contacts.map((c) => (
            <FriendItem
              key={c.jid}
              contact={c}
              chat={state.chats[c.jid]}
              active={c.jid === state.active}
              onOpen={() => client.openChat(c.jid)}
            />
          ))}
        </nav>
        <Rooms client={client} state={state} />
      </aside>
      <section class="chat">
        {(state.error || state.notice) && (
          <div class={state.error ? "toast error" : "toast"} role="alert" data-testid={state.error ? "error" : "notice"}>
            <span>{state.error ?? state.notice}</span>
            <button class="link" aria-label="Dismiss" onClick={() => client.dismiss()}>
              ×
            </button>
          </div>
        )}
        {activeRoom ? (
          <RoomView
            key={`room ${activeRoom.jid}`}
            client={client}
            room={activeRoom}
            uploads={state.uploads}
            canUpload={state.service?.upload !== false}
          />
        ) : active ? (
          <ChatView
            key={active.jid}
            client={client}
            contact={active}
            chat={state.chats[active.jid]}
            uploads={state.uploads}
            canUpload={state.service?.upload !== false}
          />
        ) : (
          <p class="empty">Choose a friend or a room to chat with.</p>
        )}
      </section>
    </div>
  );
}

function byName(a: Contact, b: Contact): number {
  return (a.name ?? a.jid).localeCompare(b.name ?? b.jid);
}

const PRESENCE_TEXT = {
  available: "Online",
  chat: "Free to chat",
  away: "Away",
  xa: "Away for a while",
  dnd: "Busy",
  unavailable: "Offline",
} as const;

function Presence(props: { contact: Contact }) {
  const p = presenceOf(props.contact);
  return (
    <span class="presence" data-presence={p.presence}>
      <span class={`dot ${p.presence}`} aria-hidden="true" />
      <span class="status">{p.status || PRESENCE_TEXT[p.presence]}</span>
    </span>
  );
}

function FriendItem(props: { contact: Contact; chat: Chat | undefined; active: boolean; onOpen: () => void }) {
  const { contact, chat } = props;
  const pending = contact.ask === "subscribe" && (contact.subscription === "none" || contact.subscription === "from");
  return (
    <button
      class={props.active ? "friend active" : "friend"}
      data-testid={`friend-${contact.jid}`}
      data-presence={presenceOf(contact).presence}
      data-subscription={contact.subscription}
      onClick={props.onOpen}
    >
      <span class="name">{contact.name || contact.jid}</span>
      {chat && chat.unread > 0 && (
        <span class="badge" data-testid={`unread-${contact.jid}`} aria-label={`${chat.unread} unread`}>
          {chat.unread}
        </span>
      )}
      <Presence contact={contact} />
      {pending && <span class="hint">Request sent</span>}
      {!contact.friend && <span class="hint">Not a friend</span>}
    </button>
  );
}

function AddFriend(props: { client: Client }) {
  const [busy, setBusy] = useState(false);
  return (
    <form
      class="add"
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        setBusy(true);
        if (await props.client.addFriend(field(form, "jid"))) form.reset();
        setBusy(false);
      }}
    >
      <input
        data-testid="add-friend-jid"
        name="jid"
        type="text"
        placeholder="friend@example.org"
        aria-label="Friend's address"
        required
      />
      <button data-testid="add-friend-submit" type="submit" disabled={busy}>
        Add
      </button>
    </form>
  );
}

// -----------------------------------------------------------------------------------
// One chat

function ChatView(props: {
  client: Client;
  contact: Contact;
  chat: Chat | undefined;
  uploads: Upload[];
  canUpload: boolean;
}) {
  const { client, contact } = props;
  const chat = props.chat;
  const [confirming, setConfirming] = useState(false);
  return (
    <>
      <header class="chat-head">
        <div>
          <h2>{contact.name || contact.jid}</h2>
          <Presence contact={contact} />
        </div>
        {contact.friend &&
          (confirming ? (
            <span class="confirm">
              Remove {contact.jid}?{" "}
              <button class="danger" data-testid="remove-friend-confirm" onClick={() => void client.removeFriend(contact.jid)}>
                Remove
              </button>
              <button class="secondary" onClick={() => setConfirming(false)}>
                Keep
              </button>
            </span>
          ) : (
            <button class="secondary" data-testid="remove-friend" onClick={() => setConfirming(true)}>
              Remove friend
            </button>
          ))}
      </header>
      <MessageList client={client} kind="chat" peer={contact.jid} chat={chat} />
      <Uploads client={client} uploads={props.uploads.filter((u) => u.kind === "chat" && u.to === contact.jid)} />
      <Composer
        canUpload={props.canUpload}
        onSend={(body) => client.send("chat", contact.jid, body)}
        onAttach={(file) => client.upload("chat", contact.jid, file)}
      />
    </>
  );
}

function MessageList(props: { client: Client; kind: Kind; peer: string; chat: Chat | undefined }) {
  const { client, kind, peer, chat } = props;
  const list = useRef<HTMLDivElement>(null);
  // Where the view was before an update: at the bottom (follow new messages), or
  // how far from the bottom (keep the place when older messages are prepended).
  const fromBottom = useRef(0);
  const messages = chat?.messages ?? [];

  useLayoutEffect(() => {
    const el = list.current;
    if (!el) return;
    if (fromBottom.current < 40) el.scrollTop = el.scrollHeight;
    else el.scrollTop = el.scrollHeight - el.clientHeight - fromBottom.current;
  }, [messages]);

  const more = chat?.loaded && !chat.complete;
  return (
    <div
      class="messages"
      data-testid="message-list"
      ref={list}
      // A picture that loads makes the list taller: stay at the bottom if it was there.
      onLoadCapture={() => {
        const el = list.current;
        if (el && fromBottom.current < 40) el.scrollTop = el.scrollHeight;
      }}
      onScroll={(e) => {
        const el = e.currentTarget;
        fromBottom.current = el.scrollHeight - el.clientHeight - el.scrollTop;
        if (el.scrollTop === 0 && more) client.loadOlder(kind, peer);
      }}
    >
      {more && (
        <button class="link older" data-testid="load-older" disabled={chat.loadingOlder} onClick={() => client.loadOlder(kind, peer)}>
          {chat.loadingOlder ? "Loading…" : "Load older messages"}
        </button>
      )}
      {chat && !chat.loaded && <p class="empty">Loading…</p>}
      {chat?.loaded && messages.length === 0 && <p class="empty">No messages yet.</p>}
      {messages.map((m) => (
        <MessageItem key={m.key} message={m} room={kind === "room"} onRetry={() => client.retry(kind, peer, m.key)} />
      ))}
    </div>
  );
}

const TICK_TITLE = {
  sending: "Sending…",
  delivered: "Delivered to an online device",
  stored: "Stored until your friend comes online",
  queued: "Queued for your friend's server",
  sent: "Sent",
  received: "Received",
} as const;

const ROOM_TICK_TITLE = { ...TICK_TITLE, delivered: "Sent to the room", sent: "Sent to the room" } as const;

function MessageItem(props: { message: ChatMessage; room: boolean; onRetry: () => void }) {
  const m = props.message;
  let ticks: ComponentChildren = null;
  if (m.outgoing) {
    if (m.state === "failed") {
      ticks = (
        <span class="failed">
          {m.error ?? "Not sent"}{" "}
          <button class="link" data-testid="message-retry" onClick={props.onRetry}>
            Retry
          </button>
        </span>
      );
    } else if (m.state !== "incoming") {
      const marks = m.state === "received" ? "✓✓" : m.state === "sending" ? "…" : "✓";
      ticks = (
        <span class={`ticks ${m.state}`} title={(props.room ? ROOM_TICK_TITLE : TICK_TITLE)[m.state]} data-testid="message-ticks">
          {marks}
        </span>
      );
    }
  }
  return (
    <div class={m.outgoing ? "msg out" : "msg in"} data-testid="message" data-state={m.state} data-nick={m.nick ?? undefined}>
      {props.room && !m.outgoing && m.nick !== null && (
        <div class="nick" data-testid="message-nick">
          {m.nick}
        </div>
      )}
      <MessageBody message={m} />
      <div class="meta">
        <time dateTime={m.timestamp}>{shortTime(m.timestamp)}</time>
        {ticks}
      </div>
    </div>
  );
}

/**
 * A message's text, and its shared file (XEP-0066) as a link, with a preview for a
 * picture. The body is always text, never HTML; a link is only ever http(s).
 */
function MessageBody(props: { message: ChatMessage }) {
  const m = props.message;
  const url = safeUrl(m.url);
  if (url === null) return <div class="body">{m.body}</div>;
  const caption = m.body.trim() !== "" && m.body.trim() !== m.url && m.body.trim() !== url;
  // Previews over https only (an http picture would be mixed content on this page).
  const image = isImageUrl(url) && (url.startsWith("https:") || url.startsWith(`${location.origin}/`));
  return (
    <div class="body attachment">
      {caption && <div>{m.body}</div>}
      {image && (
        <a href={url} target="_blank" rel="noopener noreferrer" class="preview">
          <img data-testid="message-image" src={url} alt={fileName(url)} loading="lazy" referrerpolicy="no-referrer" />
        </a>
      )}
      <a data-testid="message-link" href={url} target="_blank" rel="noopener noreferrer" class="file">
        {fileName(url)}
      </a>
    </div>
  );
}

/** The files on their way to this conversation: progress, or why one failed. */
function Uploads(props: { client: Client; uploads: Upload[] }) {
  if (props.uploads.length === 0) return null;
  return (
    <div class="uploads">
      {props.uploads.map((u) => {
        const percent = u.size > 0 ? Math.min(100, Math.floor((u.loaded / u.size) * 100)) : 0;
        return (
          <div class={`upload ${u.state}`} key={u.id} data-testid="upload" data-state={u.state}>
            <span class="name">
              {u.filename} <span class="size">({fileSize(u.size)})</span>
            </span>
            {u.state === "uploading" ? (
              <>
                <progress max={100} value={percent} aria-label={`Uploading ${u.filename}`} />
                <span data-testid="upload-progress">{percent}%</span>
              </>
            ) : (
              <span class="error" role="alert" data-testid="upload-error">
                {u.filename}: {u.error}
              </span>
            )}
            <button
              class="link"
              data-testid="upload-dismiss"
              aria-label={u.state === "uploading" ? "Cancel the upload" : "Dismiss"}
              onClick={() => props.client.dismissUpload(u.id)}
            >
              {u.state === "uploading" ? "Cancel" : "×"}
            </button>
          </div>
        );
      })}
    </div>
  );
}

function Composer(props: {
  onSend: (body: string) => void;
  onAttach: (file: File) => void;
  canUpload: boolean;
  disabled?: boolean;
}) {
  const [body, setBody] = useState("");
  const input = useRef<HTMLTextAreaElement>(null);
  const files = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);
  const send = () => {
    const el = input.current;
    if (!el || el.value.trim() === "" || props.disabled) return;
    props.onSend(el.value);
    el.value = "";
    setBody("");
  };
  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
    >
      <input
        ref={files}
        data-testid="file-input"
        class="hidden"
        type="file"
        multiple
        tabIndex={-1}
        aria-hidden="true"
        onChange={(e) => {
          const el = e.currentTarget;
          for (const file of Array.from(el.files ?? [])) props.onAttach(file);
          el.value = "";
        }}
      />
      <button
        class="secondary attach"
        data-testid="attach-file"
        type="button"
        title={props.canUpload ? "Send a file" : "This server does not take files"}
        disabled={props.disabled || !props.canUpload}
        onClick={() => files.current?.click()}
      >
        Attach
      </button>
      <textarea
        data-testid="message-input"
        ref={input}
        rows={2}
        placeholder="Write a message (Enter sends, Shift+Enter for a new line)"
        value={body}
        onInput={(e) => setBody(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            send();
          }
        }}
      />
      <button data-testid="message-send" type="submit" disabled={body.trim() === "" || props.disabled}>
        Send
      </button>
    </form>
  );
}

// -----------------------------------------------------------------------------------
// Rooms

function Rooms(props: { client: Client; state: State }) {
  const { client, state } = props;
  const rooms = Object.values(state.rooms).sort((a, b) => roomTitle(a).localeCompare(roomTitle(b)) || a.jid.localeCompare(b.jid));
  return (
    <section class="rooms">
      <h3>Rooms</h3>
      <JoinRoom client={client} service={state.service?.rooms ?? `conference.${domainOf(client.me)}`} />
      <nav data-testid="room-list">
        {rooms.length === 0 && <p class="empty">No rooms yet: join one by name or address.</p>}
        {rooms.map((r) => (
          <button
            key={r.jid}
            class={r.jid === state.activeRoom ? "friend room active" : "friend room"}
            data-testid={`room-${r.jid}`}
            data-joined={String(r.joined)}
            onClick={() => client.openRoom(r.jid)}
          >
            <span class="name" title={r.jid}>
              # {roomTitle(r)}
            </span>
            {r.chat.unread > 0 && (
              <span class="badge" data-testid={`room-unread-${r.jid}`} aria-label={`${r.chat.unread} unread`}>
                {r.chat.unread}
              </span>
            )}
            <span class="hint">
              {r.joining
                ? "Joining…"
                : r.joined
                  ? `${Object.keys(r.occupants).length} here`
                  : "Not joined"}
            </span>
          </button>
        ))}
      </nav>
    </section>
  );
}

function JoinRoom(props: { client: Client; service: string | null }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const me = props.client.session.jid;
  return (
    <form
      class="join"
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        setBusy(true);
        setError(null);
        const failed = await props.client.joinRoom(field(form, "room"), field(form, "nick"));
        if (failed === null) form.reset();
        setError(failed);
        setBusy(false);
      }}
    >
      <input
        data-testid="join-room-jid"
        name="room"
        type="text"
        placeholder={`room, or room@${props.service ?? "conference.example.org"}`}
        aria-label="Room's name or address"
        required
      />
      <div class="row">
        <input
          data-testid="join-room-nick"
          name="nick"
          type="text"
          placeholder={`Nickname (${localPart(me)})`}
          aria-label="Nickname"
        />
        <button data-testid="join-room-submit" type="submit" disabled={busy}>
          Join
        </button>
      </div>
      {error && (
        <p class="error" role="alert" data-testid="join-room-error">
          {error}
        </p>
      )}
    </form>
  );
}

/** A room's name, else its address's local part. */
function roomTitle(room: RoomState): string {
  return room.name || localPart(room.jid) || room.jid;
}

const ROLE_ORDER: Record<string, number> = { moderator: 0, participant: 1, visitor: 2 };

function byRole(a: Occupant, b: Occupant): number {
  return (ROLE_ORDER[a.role] ?? 3) - (ROLE_ORDER[b.role] ?? 3) || a.nick.localeCompare(b.nick);
}

function RoomView(props: { client: Client; room: RoomState; uploads: Upload[]; canUpload: boolean }) {
  const { client, room } = props;
  const occupants = Object.values(room.occupants).sort(byRole);
  return (
    <div class="room-view" data-testid="room-view" data-room={room.jid} data-joined={String(room.joined)}>
      <header class="chat-head">
        <div>
          <h2 data-testid="room-title" title={room.jid}>
            # {roomTitle(room)}
          </h2>
          <span class="presence">
            {room.subject ? (
              <span class="subject" data-testid="room-subject">
                {room.subject}
              </span>
            ) : (
              <span>{room.jid}</span>
            )}
          </span>
        </div>
        <span class="confirm">
          {!room.joined && (
            <button data-testid="room-rejoin" disabled={room.joining} onClick={() => client.rejoin(room.jid)}>
              {room.joining ? "Joining…" : "Join again"}
            </button>
          )}
          <button class="secondary" data-testid="room-leave" onClick={() => void client.leaveRoom(room.jid)}>
            Leave room
          </button>
        </span>
      </header>
      <div class="room-body">
        <div class="room-chat">
          <MessageList client={client} kind="room" peer={room.jid} chat={room.chat} />
          <Uploads client={client} uploads={props.uploads.filter((u) => u.kind === "room" && u.to === room.jid)} />
          <Composer
            canUpload={props.canUpload}
            disabled={!room.joined}
            onSend={(body) => client.send("room", room.jid, body)}
            onAttach={(file) => client.upload("room", room.jid, file)}
          />
        </div>
        <aside class="occupants" data-testid="occupant-list" aria-label="In the room">
          <h3>In the room ({occupants.length})</h3>
          {occupants.map((o) => (
            <div
              class="occupant"
              key={o.nick}
              data-testid={`occupant-${o.nick}`}
              data-role={o.role}
              data-affiliation={o.affiliation}
              data-presence={o.presence}
              title={o.jid ?? undefined}
            >
              <span class={`dot ${o.presence}`} aria-hidden="true" />
              <span class="name">{o.nick}</span>
              {o.nick === room.nick && <span class="hint">(you)</span>}
              {o.role === "moderator" && <span class="hint">{o.affiliation === "owner" ? "owner" : "moderator"}</span>}
            </div>
          ))}
        </aside>
      </div>
    </div>
  );
}
