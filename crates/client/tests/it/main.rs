//! The client library against real servers on loopback (`TestServer`): chatting with
//! receipts and read markers, subscriptions and presence, resumption after a cut,
//! catch-up after the server lost the session, failover to the next server and back,
//! and a certificate that is not the one pinned; direct links between two clients
//! ([`p2p`]).

mod files;
mod p2p;

use std::path::Path;
use std::time::Duration;

use outpost_client::{
    Client, Command, Config, DeliveryState, Event, Identity, P2pConfig, Server, Trust,
};
use outpost_testkit::TestServer;
use outpost_testkit::relay::Relay;
use tokio::sync::mpsc::Receiver;

/// How long a test waits for an event it expects. Failover and returning home take a
/// few of the client's 5-second ticks.
const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse";

struct User {
    client: Client,
    events: Receiver<Event>,
    /// Events passed over while waiting for others.
    seen: Vec<Event>,
}

impl User {
    fn start(jid: &str, servers: &[String], pins: &Path) -> User {
        User::start_with_dns(jid, servers, None, pins)
    }

    fn start_with_dns(
        jid: &str,
        servers: &[String],
        dns: Option<std::net::SocketAddr>,
        pins: &Path,
    ) -> User {
        User::start_config(User::config(jid, servers, dns, pins))
    }

    /// A client with direct links on, its device key `identity`, its pins in `dir`.
    fn start_p2p(jid: &str, servers: &[String], dir: &Path, identity: Identity) -> User {
        let mut config = User::config(jid, servers, None, dir);
        config.p2p = Some(P2pConfig {
            identity,
            pins: dir.join("known_peers"),
        });
        User::start_config(config)
    }

    fn config(
        jid: &str,
        servers: &[String],
        dns: Option<std::net::SocketAddr>,
        pins: &Path,
    ) -> Config {
        Config {
            jid: jid.to_owned(),
            password: PASSWORD.to_owned(),
            servers: servers
                .iter()
                .map(|a| a.parse::<Server>().expect("address"))
                .collect(),
            dns,
            resource: "test".to_owned(),
            trust: Trust::Pinned(pins.join("known_servers")),
            p2p: None,
            downloads: None,
        }
    }

    fn start_config(config: Config) -> User {
        let (client, events) = Client::start(config).expect("client starts");
        User {
            client,
            events,
            seen: Vec::new(),
        }
    }

    /// The first event `pred` accepts, among those passed over before or the next ones;
    /// the others are kept in `seen`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(at) = self.seen.iter().position(&pred) {
            return self.seen.remove(at);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(event)) => self.seen.push(event),
                Ok(None) => panic!(
                    "the client stopped while waiting for {what}; saw {:?}",
                    self.seen
                ),
                Err(_) => panic!("no {what} within {WAIT:?}; saw {:?}", self.seen),
            }
        }
    }

    async fn connected(&mut self) -> (String, String, bool) {
        match self
            .wait_for("connected", |e| matches!(e, Event::Connected { .. }))
            .await
        {
            Event::Connected {
                server,
                why,
                resumed,
                ..
            } => (server, why, resumed),
            _ => unreachable!(),
        }
    }

    async fn send(&self, to: &str, body: &str, id: &str) {
        assert!(
            self.client
                .command(Command::Send {
                    to: to.to_owned(),
                    body: body.to_owned(),
                    id: Some(id.to_owned()),
                })
                .await
        );
    }

    async fn delivery(&mut self, id: &str, state: DeliveryState) {
        self.wait_for(
            &format!("{id} {state:?}"),
            |e| matches!(e, Event::Delivery { id: i, state: s } if i == id && *s == state),
        )
        .await;
    }

    async fn message(&mut self, body: &str) -> Event {
        self.wait_for(
            &format!("message {body:?}"),
            |e| matches!(e, Event::Message { body: b, .. } if b == body),
        )
        .await
    }

    async fn joined(&mut self, room: &str) {
        self.wait_for(
            &format!("entering {room}"),
            |e| matches!(e, Event::Joined { room: r, .. } if r == room),
        )
        .await;
    }

    /// How many times a message with this body was shown, among the events seen so far.
    fn shown(&self, body: &str) -> usize {
        self.seen
            .iter()
            .filter(|e| matches!(e, Event::Message { body: b, .. } if b == body))
            .count()
    }
}

async fn server_with_users(users: &[&str]) -> TestServer {
    let server = TestServer::start().await;
    for user in users {
        server.add_user(user, PASSWORD).await;
    }
    server
}

/// Makes `a` and `b` friends through the clients' own commands.
async fn befriend(a: &mut User, a_jid: &str, b: &mut User, b_jid: &str) {
    a.client
        .command(Command::Add {
            jid: b_jid.to_owned(),
        })
        .await;
    b.wait_for(
        "a subscription request",
        |e| matches!(e, Event::Subscription { from } if from == a_jid),
    )
    .await;
    b.client
        .command(Command::Add {
            jid: a_jid.to_owned(),
        })
        .await;
    a.wait_for(
        "a subscription request back",
        |e| matches!(e, Event::Subscription { from } if from == b_jid),
    )
    .await;
    a.client
        .command(Command::Add {
            jid: b_jid.to_owned(),
        })
        .await;
    a.wait_for(
        "the friend's presence",
        |e| matches!(e, Event::Presence { from, available: true } if from == b_jid),
    )
    .await;
    b.wait_for(
        "the friend's presence",
        |e| matches!(e, Event::Presence { from, available: true } if from == a_jid),
    )
    .await;
}

#[tokio::test]
async fn friends_chat_with_receipts_and_read_markers() {
    let server = server_with_users(&["alice", "bob"]).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start(
        "alice@localhost",
        &[server.starttls.to_string()],
        pins.path(),
    );
    let mut bob = User::start(
        "bob@localhost",
        &[format!("tls://{}", server.direct_tls)],
        pins.path(),
    );
    let (_, why, resumed) = alice.connected().await;
    assert_eq!((why.as_str(), resumed), ("home", false));
    bob.connected().await;
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;

    alice.send("bob@localhost", "hello <bob> & co", "m1").await;
    alice.delivery("m1", DeliveryState::Queued).await;
    let Event::Message { from, id, path, .. } = bob.message("hello <bob> & co").await else {
        unreachable!()
    };
    assert_eq!((from.as_str(), id.as_str()), ("alice@localhost", "m1"));
    assert_eq!(path, outpost_client::Path::Server);
    alice.delivery("m1", DeliveryState::Delivered).await;
    bob.client
        .command(Command::Read {
            to: "alice@localhost".to_owned(),
            id: "m1".to_owned(),
        })
        .await;
    alice.delivery("m1", DeliveryState::Read).await;

    // The roster shows the friendship both ways (asked now, not as it was pushed
    // during the exchange).
    alice.seen.retain(|e| !matches!(e, Event::Roster { .. }));
    alice.client.command(Command::Roster).await;
    let Event::Roster { items } = alice
        .wait_for(
            "the roster",
            |e| matches!(e, Event::Roster { items } if !items.is_empty()),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].jid, "bob@localhost");
    assert_eq!(items[0].subscription, "both");
    assert!(items[0].available);
}

#[tokio::test]
async fn a_cut_connection_resumes_and_nothing_is_lost_or_repeated() {
    let server = server_with_users(&["alice", "bob"]).await;
    let relay = Relay::start(server.starttls).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start("alice@localhost", &[relay.addr.to_string()], pins.path());
    let mut bob = User::start("bob@localhost", &[server.starttls.to_string()], pins.path());
    alice.connected().await;
    bob.connected().await;
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;
    bob.send("alice@localhost", "before the cut", "b1").await;
    alice.message("before the cut").await;

    relay.cut();
    alice
        .wait_for("the disconnection", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await;
    bob.send("alice@localhost", "during the cut", "b2").await;
    bob.delivery("b2", DeliveryState::Queued).await;
    relay.heal();
    let (_, _, resumed) = alice.connected().await;
    assert!(resumed, "the session was resumed");
    alice.message("during the cut").await;

    // Anything else still on its way has arrived once alice's next message is queued:
    // the server answers in order.
    alice.send("bob@localhost", "after", "a1").await;
    alice.delivery("a1", DeliveryState::Queued).await;
    assert_eq!(
        alice.shown("before the cut"),
        0,
        "shown again: {:?}",
        alice.seen
    );
    assert_eq!(
        alice.shown("during the cut"),
        0,
        "shown twice: {:?}",
        alice.seen
    );
    // The resumed session goes on with what it knew: Bob is still online.
    let gone = alice.seen.iter().any(|e| {
        matches!(
            e,
            Event::Presence {
                available: false,
                ..
            }
        )
    });
    assert!(
        !gone,
        "presence lost across the resumption: {:?}",
        alice.seen
    );
    alice.seen.retain(|e| !matches!(e, Event::Roster { .. }));
    alice.client.command(Command::Roster).await;
    let Event::Roster { items } = alice
        .wait_for("the roster", |e| matches!(e, Event::Roster { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(
        items
            .iter()
            .any(|i| i.jid == "bob@localhost" && i.available),
        "{items:?}"
    );
}

#[tokio::test]
async fn after_a_server_restart_the_archive_fills_the_gap_without_repeats() {
    let port = free_port();
    let mut server = TestServer::start_with(|c| {
        c.listen.c2s = vec![format!("127.0.0.1:{port}").parse().expect("addr")];
    })
    .await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start(
        "alice@localhost",
        &[server.starttls.to_string()],
        pins.path(),
    );
    alice.connected().await;
    let mut bob = server.login("bob", PASSWORD, "raw").await;
    bob.send(&outpost_testkit::chat("alice@localhost", "first"))
        .await;
    alice.message("first").await;

    // The restart loses the session: alice logs in afresh and asks the archive.
    server.restart().await;
    alice
        .wait_for("the disconnection", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await;
    let mut bob = server.login("bob", PASSWORD, "raw").await;
    bob.send(&outpost_testkit::chat("alice@localhost", "while away"))
        .await;
    bob.barrier().await;
    let (_, _, resumed) = alice.connected().await;
    assert!(!resumed);
    alice.message("while away").await;
    alice.send("bob@localhost", "back", "a1").await;
    alice.delivery("a1", DeliveryState::Queued).await;
    assert_eq!(alice.shown("first"), 0, "repeated: {:?}", alice.seen);
    assert_eq!(
        alice.shown("while away"),
        0,
        "shown twice: {:?}",
        alice.seen
    );
}

#[tokio::test]
async fn the_client_fails_over_to_the_next_server_and_returns_home() {
    let home_port = free_port();
    let mut home = TestServer::start_with(|c| {
        c.listen.c2s = vec![format!("127.0.0.1:{home_port}").parse().expect("addr")];
    })
    .await;
    let standby = server_with_users(&["alice", "bob"]).await;
    home.add_user("alice", PASSWORD).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start(
        "alice@localhost",
        &[home.starttls.to_string(), standby.starttls.to_string()],
        pins.path(),
    );
    let (server, why, _) = alice.connected().await;
    assert_eq!((server, why.as_str()), (home.starttls.to_string(), "home"));

    home.stop().await;
    let (server, why, _) = alice.connected().await;
    assert_eq!(
        (server, why.as_str()),
        (standby.starttls.to_string(), "failover")
    );
    let mut bob = standby.login("bob", PASSWORD, "raw").await;
    bob.send(&outpost_testkit::chat("alice@localhost", "on the standby"))
        .await;
    alice.message("on the standby").await;

    home.restart().await;
    let (server, why, _) = alice.connected().await;
    assert_eq!(
        (server, why.as_str()),
        (home.starttls.to_string(), "returned")
    );
}

#[tokio::test]
async fn a_server_showing_another_certificate_than_the_pinned_one_is_refused() {
    let server = server_with_users(&["alice"]).await;
    let pins = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        pins.path().join("known_servers"),
        format!("{} {}\n", server.starttls, "00".repeat(32)),
    )
    .expect("write pins");
    let mut alice = User::start(
        "alice@localhost",
        &[server.starttls.to_string()],
        pins.path(),
    );
    let Event::Error { text } = alice
        .wait_for("an error", |e| matches!(e, Event::Error { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(text.contains("not the one seen before"), "{text}");
    assert!(text.contains(&server.starttls.to_string()), "{text}");
    alice.client.command(Command::Quit).await;
    while let Some(event) = alice.events.recv().await {
        assert!(
            !matches!(event, Event::Connected { .. }),
            "connected despite the pin: {event:?}"
        );
    }
}

#[tokio::test]
async fn the_first_certificate_is_pinned_after_a_login() {
    let server = server_with_users(&["alice"]).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start(
        "alice@localhost",
        &[server.starttls.to_string()],
        pins.path(),
    );
    alice.connected().await;
    let text = std::fs::read_to_string(pins.path().join("known_servers")).expect("pins");
    let fingerprint = server.identity.fingerprint().expect("fingerprint");
    let expected: String = fingerprint
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(text, format!("{} {expected}\n", server.starttls));
}

/// A loopback port nothing listens on now, for a server that must come back on it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_conversation_s_history_comes_from_the_archive_in_order() {
    let server = server_with_users(&["alice", "bob"]).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start(
        "alice@localhost",
        &[server.starttls.to_string()],
        pins.path(),
    );
    alice.connected().await;
    let mut bob = server.login("bob", PASSWORD, "raw").await;
    for n in 1..=3 {
        bob.send(&format!(
            "<message to='alice@localhost' type='chat' id='h{n}'><body>old {n}</body></message>"
        ))
        .await;
        alice.message(&format!("old {n}")).await;
    }
    alice.send("bob@localhost", "my answer", "a1").await;
    alice.delivery("a1", DeliveryState::Queued).await;

    // Another device of Alice's, later: the conversation is in the archive.
    let mut phone = User::start(
        "alice@localhost",
        &[server.starttls.to_string()],
        pins.path(),
    );
    phone.connected().await;
    phone
        .client
        .command(Command::History {
            with: "bob@localhost".to_owned(),
        })
        .await;
    let Event::History {
        with,
        items,
        complete,
    } = phone
        .wait_for("the history", |e| matches!(e, Event::History { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(with, "bob@localhost");
    assert!(complete);
    let lines: Vec<(&str, bool, &str)> = items
        .iter()
        .map(|i| (i.body.as_str(), i.mine, i.id.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            ("old 1", false, "h1"),
            ("old 2", false, "h2"),
            ("old 3", false, "h3"),
            ("my answer", true, "a1"),
        ]
    );
}

#[tokio::test]
async fn friends_talk_in_a_room_and_enter_it_again_after_a_restart() {
    let port = free_port();
    let mut server = TestServer::start_with(|c| {
        c.listen.c2s = vec![format!("127.0.0.1:{port}").parse().expect("addr")];
    })
    .await;
    server.add_user("alice", PASSWORD).await;
    server.add_user("bob", PASSWORD).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let servers = [server.starttls.to_string()];
    let mut alice = User::start("alice@localhost", &servers, pins.path());
    let mut bob = User::start("bob@localhost", &servers, pins.path());
    const ROOM: &str = "lobby@conference.localhost";
    for user in [&mut alice, &mut bob] {
        user.connected().await;
        user.client
            .command(Command::Join {
                room: ROOM.to_owned(),
                nick: None,
            })
            .await;
        user.joined(ROOM).await;
    }
    say(&alice, ROOM, "hello room", "r1").await;
    alice.delivery("r1", DeliveryState::Queued).await;
    let Event::Groupchat { from, mine, .. } = bob
        .wait_for(
            "the room message",
            |e| matches!(e, Event::Groupchat { body, .. } if body == "hello room"),
        )
        .await
    else {
        unreachable!()
    };
    assert_eq!((from.as_str(), mine), ("alice", false));
    alice
        .wait_for(
            "our own message reflected",
            |e| matches!(e, Event::Groupchat { id, mine: true, .. } if id == "r1"),
        )
        .await;

    // The server restarts: the clients log in afresh and enter the room again; whatever
    // the room replays on entry is not shown a second time.
    server.restart().await;
    alice.joined(ROOM).await;
    bob.joined(ROOM).await;
    say(&alice, ROOM, "after the restart", "r2").await;
    bob.wait_for(
        "the next room message",
        |e| matches!(e, Event::Groupchat { body, .. } if body == "after the restart"),
    )
    .await;
    let repeats = bob
        .seen
        .iter()
        .filter(|e| matches!(e, Event::Groupchat { body, .. } if body == "hello room"))
        .count();
    assert_eq!(repeats, 0, "shown again: {:?}", bob.seen);
}

async fn say(user: &User, room: &str, body: &str, id: &str) {
    assert!(
        user.client
            .command(Command::Say {
                room: room.to_owned(),
                body: body.to_owned(),
                id: Some(id.to_owned()),
            })
            .await
    );
}

#[tokio::test]
async fn with_no_server_given_the_client_follows_the_domain_s_srv_records() {
    // Not `localhost`: resolvers answer that name and its subdomains themselves.
    let server = TestServer::start_with(|c| c.domains = vec!["chat.test".to_owned()]).await;
    server.add_user("alice", PASSWORD).await;
    let dns = outpost_testkit::dns::DnsServer::start().await;
    let dead = outpost_testkit::closed_port().await;
    // Home first (nothing listens there now), the live server second.
    dns.add_srv(
        "_xmpp-client._tcp.chat.test",
        10,
        0,
        dead.port(),
        "localhost",
    );
    dns.add_srv(
        "_xmpp-client._tcp.chat.test",
        20,
        0,
        server.starttls.port(),
        "localhost",
    );
    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start_with_dns("alice@chat.test", &[], Some(dns.addr), pins.path());
    let (at, why, _) = alice.connected().await;
    assert_eq!(at, format!("localhost:{}", server.starttls.port()));
    assert_eq!(why, "failover");
    for service in ["_xmpp-client", "_xmpps-client"] {
        assert!(
            dns.was_asked(
                &format!("{service}._tcp.chat.test."),
                outpost_testkit::dns::RecordType::SRV
            ),
            "{service} not asked: {:?}",
            dns.asked()
        );
    }
}

/// The client acknowledges everything it read as it quits (XEP-0198): otherwise the
/// server would hand the last messages to the offline store and the next login would show
/// them again.
#[tokio::test]
async fn what_a_client_received_before_quitting_is_not_handed_to_its_next_login() {
    let server = server_with_users(&["alice", "bob"]).await;
    let pins = tempfile::tempdir().expect("tempdir");
    let servers = [server.starttls.to_string()];
    let alice = User::start("alice@localhost", &servers, pins.path());
    let mut bob = User::start("bob@localhost", &servers, pins.path());
    bob.connected().await;
    alice.send("bob@localhost", "once only", "q1").await;
    bob.message("once only").await;
    bob.client.command(Command::Quit).await;
    while bob.events.recv().await.is_some() {}

    // A later login (another run: nothing remembered), then a marker message: what comes
    // before the marker is what the server kept for it.
    let mut bob = User::start("bob@localhost", &servers, pins.path());
    bob.connected().await;
    alice.send("bob@localhost", "marker", "q2").await;
    bob.message("marker").await;
    assert_eq!(bob.shown("once only"), 0, "handed again: {:?}", bob.seen);
}

/// Sites a.test and c.test reach each other only through the hub h.test; alice's client
/// on a.test shows her message to carol as relayed once the hub has taken it.
#[tokio::test]
async fn a_message_through_the_hub_is_shown_relayed() {
    let site = |domain: &'static str, hub: Option<&'static str>| {
        move |c: &mut outpost_server::config::Config| {
            c.domains = vec![domain.to_owned()];
            c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
            c.federation.enabled = true;
            c.federation.srv_lookup = false;
            c.federation.dns_server = Some("127.0.0.1:9".parse().expect("addr"));
            c.federation.retry_initial_secs = 1;
            c.federation.retry_max_secs = 2;
            c.federation.probe_interval_secs = 1;
            c.federation.hub = hub.map(str::to_owned);
            c.federation.replicate = false;
        }
    };
    let hub = TestServer::start_with(move |c| {
        site("h.test", None)(c);
        c.federation.relay_for = vec!["a.test".to_owned(), "c.test".to_owned()];
    })
    .await;
    let a = TestServer::start_with(site("a.test", Some("h.test"))).await;
    let c = TestServer::start_with(site("c.test", Some("h.test"))).await;
    fn handle(s: &TestServer) -> &outpost_server::ServerHandle {
        s.handle.as_ref().expect("running")
    }
    let refused = outpost_testkit::closed_port().await;
    handle(&a).set_peer_address("c.test", refused.into());
    handle(&c).set_peer_address("a.test", refused.into());
    for site in [&a, &c] {
        handle(site).set_peer_address("h.test", hub.s2s.expect("s2s").into());
    }
    handle(&hub).set_peer_address("a.test", a.s2s.expect("s2s").into());
    handle(&hub).set_peer_address("c.test", c.s2s.expect("s2s").into());
    a.add_user("alice", PASSWORD).await;
    c.add_user("carol", PASSWORD).await;

    let pins = tempfile::tempdir().expect("tempdir");
    let mut alice = User::start("alice@a.test", &[a.starttls.to_string()], pins.path());
    alice.connected().await;
    let mut carol = c.login("carol", PASSWORD, "pc").await;
    carol.available().await;
    alice.send("carol@c.test", "across the hub", "x1").await;
    let got = carol
        .recv_where(|el| outpost_testkit::body(el).as_deref() == Some("across the hub"))
        .await;
    assert_eq!(got.attr("id"), Some("x1"));
    alice.delivery("x1", DeliveryState::Relayed).await;
}
