// The view. Elements a test needs carry `data-testid`; tests/e2e rely on those names.

import type { ComponentChildren } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { describe, login, register, Session, watchConnectivity } from "./api.ts";
import {
  type Chat,
  type ChatMessage,
  Client,
  type Contact,
  loadStored,
  presenceOf,
  saveStored,
  type State,
} from "./client.ts";
import { shortTime } from "./util.ts";

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

  const unread = Object.values(state.chats).reduce((n, c) => n + c.unread, 0);
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) Outpost` : "Outpost";
  }, [unread]);

  const contacts = Object.values(state.contacts).sort(byName);
  const active = state.active !== null ? state.contacts[state.active] : undefined;
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
        {active ? (
          <ChatView key={active.jid} client={client} contact={active} chat={state.chats[active.jid]} />
        ) : (
          <p class="empty">Choose a friend to chat with.</p>
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

function ChatView(props: { client: Client; contact: Contact; chat: Chat | undefined }) {
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
      <MessageList client={client} peer={contact.jid} chat={chat} />
      <Composer onSend={(body) => client.send(contact.jid, body)} />
    </>
  );
}

function MessageList(props: { client: Client; peer: string; chat: Chat | undefined }) {
  const { client, peer, chat } = props;
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
      onScroll={(e) => {
        const el = e.currentTarget;
        fromBottom.current = el.scrollHeight - el.clientHeight - el.scrollTop;
        if (el.scrollTop === 0 && more) client.loadOlder(peer);
      }}
    >
      {more && (
        <button class="link older" data-testid="load-older" disabled={chat.loadingOlder} onClick={() => client.loadOlder(peer)}>
          {chat.loadingOlder ? "Loading…" : "Load older messages"}
        </button>
      )}
      {chat && !chat.loaded && <p class="empty">Loading…</p>}
      {chat?.loaded && messages.length === 0 && <p class="empty">No messages yet.</p>}
      {messages.map((m) => (
        <MessageItem key={m.key} message={m} onRetry={() => client.retry(peer, m.key)} />
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

function MessageItem(props: { message: ChatMessage; onRetry: () => void }) {
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
        <span class={`ticks ${m.state}`} title={TICK_TITLE[m.state]} data-testid="message-ticks">
          {marks}
        </span>
      );
    }
  }
  return (
    <div class={m.outgoing ? "msg out" : "msg in"} data-testid="message" data-state={m.state}>
      <div class="body">{m.body}</div>
      <div class="meta">
        <time dateTime={m.timestamp}>{shortTime(m.timestamp)}</time>
        {ticks}
      </div>
    </div>
  );
}

function Composer(props: { onSend: (body: string) => void }) {
  const [body, setBody] = useState("");
  const input = useRef<HTMLTextAreaElement>(null);
  useEffect(() => input.current?.focus(), []);
  const send = () => {
    const el = input.current;
    if (!el || el.value.trim() === "") return;
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
      <button data-testid="message-send" type="submit" disabled={body.trim() === ""}>
        Send
      </button>
    </form>
  );
}
