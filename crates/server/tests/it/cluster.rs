//! Several nodes serving one domain: real servers in this process, each with its own
//! connection pool to one real PostgreSQL database, and a real NATS server between them
//! (`outpost_testkit::postgres`, `outpost_testkit::nats`).

use std::sync::Arc;

use outpost_proto::minidom::Element;
use outpost_store::{PgStore, Store};
use outpost_testkit::nats::NatsServer;
use outpost_testkit::*;
use tokio::io::AsyncWriteExt;

const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost";

/// A NATS server, a fresh database, and the nodes on them.
struct Cluster {
    nats: NatsServer,
    url: String,
    nodes: Vec<TestServer>,
}

pub(crate) async fn database() -> String {
    tokio::task::spawn_blocking(|| {
        let server = outpost_testkit::postgres::shared();
        server.url(&server.create_database())
    })
    .await
    .expect("database")
}

pub(crate) async fn store(url: &str) -> Arc<dyn Store> {
    Arc::new(PgStore::connect(url).await.expect("connect PostgreSQL"))
}

/// Starts a node called `id` on the cluster's database and NATS.
async fn node(url: &str, nats: &str, id: &str) -> TestServer {
    let (url_c, nats, id) = (url.to_owned(), nats.to_owned(), id.to_owned());
    let tweak = move |c: &mut outpost_server::config::Config| cluster_config(c, &url_c, &nats, &id);
    TestServer::start_with_store(store(url).await, tweak, None).await
}

pub(crate) fn cluster_config(
    c: &mut outpost_server::config::Config,
    url: &str,
    nats: &str,
    id: &str,
) {
    c.storage.backend = outpost_server::config::StorageBackend::Postgres;
    c.storage.url = Some(url.to_owned());
    c.cluster.nats_url = Some(nats.to_owned());
    c.cluster.node_id = Some(id.to_owned());
}

async fn cluster(n: usize) -> Cluster {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats");
    let url = database().await;
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(node(&url, nats.url(), &format!("n{i}")).await);
    }
    nodes[0].add_user("alice", "wonderland").await;
    nodes[0].add_user("bob", "builder").await;
    Cluster { nats, url, nodes }
}

impl Cluster {
    async fn stop(mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
        drop(self.nats);
    }
}

fn is_presence(el: &Element, from: &str, ty: Option<&str>) -> bool {
    el.name() == "presence" && el.attr("from") == Some(from) && el.attr("type") == ty
}

/// `a` subscribes to `b`'s presence and `b` approves, each on its own node.
async fn subscribe(a: &mut Client, a_bare: &str, b: &mut Client, b_bare: &str) {
    let b_full = b.jid.clone();
    a.send(&format!("<presence to='{b_bare}' type='subscribe'/>"))
        .await;
    assert!(a.recv_roster_push(b_bare).await.attr("ask").is_some());
    b.recv_where(|el| is_presence(el, a_bare, Some("subscribe")))
        .await;
    b.send(&format!("<presence to='{a_bare}' type='subscribed'/>"))
        .await;
    b.recv_roster_push(a_bare).await;
    assert!(a.recv_roster_push(b_bare).await.attr("ask").is_none());
    a.recv_where(|el| is_presence(el, &b_full, None)).await;
}

/// Alice on the first node and Bob on the second, subscribed to each other.
async fn friends_on_two_nodes(c: &Cluster) -> (Client, Client) {
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    alice.roster_get().await;
    bob.roster_get().await;
    alice.available().await;
    bob.available().await;
    subscribe(&mut alice, ALICE, &mut bob, BOB).await;
    subscribe(&mut bob, BOB, &mut alice, ALICE).await;
    (alice, bob)
}

#[tokio::test]
async fn chat_presence_and_subscriptions_cross_nodes() {
    let c = cluster(2).await;
    let (mut alice, mut bob) = friends_on_two_nodes(&c).await;

    alice.send(&chat(BOB, "over the bus")).await;
    let got = bob.recv_message().await;
    assert!(
        is_message(&got, "alice@localhost/phone", "over the bus"),
        "{got:?}"
    );
    bob.send(&chat("alice@localhost/phone", "and back")).await;
    let got = alice.recv_message().await;
    assert!(is_message(&got, "bob@localhost/pc", "and back"), "{got:?}");

    // An IQ to a full JID on the other node, and its answer.
    alice
        .send("<iq type='get' to='bob@localhost/pc' id='x1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let request = bob.recv_where(|el| el.name() == "iq").await;
    assert_eq!(request.attr("from"), Some("alice@localhost/phone"));
    bob.send("<iq type='result' to='alice@localhost/phone' id='x1'/>")
        .await;
    let pong = alice.recv_where(|el| el.name() == "iq").await;
    assert_eq!(
        (pong.attr("type"), pong.attr("from")),
        (Some("result"), Some("bob@localhost/pc"))
    );

    // A second resource of Bob's, on the first node, sees Alice (a probe across) and
    // Alice sees it.
    let mut tablet = c.nodes[0].login("bob", "builder", "tablet").await;
    tablet.available().await;
    tablet
        .recv_where(|el| is_presence(el, "alice@localhost/phone", None))
        .await;
    alice
        .recv_where(|el| is_presence(el, "bob@localhost/tablet", None))
        .await;

    bob.send("<presence type='unavailable'/>").await;
    alice
        .recv_where(|el| is_presence(el, "bob@localhost/pc", Some("unavailable")))
        .await;
    c.stop().await;
}

const NS_CARBONS: &str = "urn:xmpp:carbons:2";

/// Alice's phone on one node, her laptop (carbons on) on the other: what she sends and
/// receives on one, the other sees; a message to her bare JID goes to the phone, the
/// higher priority, wherever it is.
#[tokio::test]
async fn carbons_and_priorities_across_nodes() {
    let c = cluster(2).await;
    let mut phone = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut laptop = c.nodes[1].login("alice", "wonderland", "laptop").await;
    phone.available_with_priority(10).await;
    laptop.available_with_priority(1).await;
    let on = laptop
        .query("set", None, &format!("<enable xmlns='{NS_CARBONS}'/>"))
        .await;
    assert_eq!(on.attr("type"), Some("result"), "{on:?}");
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    bob.available().await;

    bob.send(&chat(ALICE, "to the bare JID")).await;
    let got = phone.recv_message().await;
    assert!(
        is_message(&got, "bob@localhost/pc", "to the bare JID"),
        "{got:?}"
    );
    let carbon = laptop.recv_message().await;
    assert!(carbon.has_child("received", NS_CARBONS), "{carbon:?}");
    assert_eq!(carbon.attr("from"), Some(ALICE));

    phone.send(&chat(BOB, "from the phone")).await;
    assert!(is_message(
        &bob.recv_message().await,
        "alice@localhost/phone",
        "from the phone"
    ));
    let carbon = laptop.recv_message().await;
    let sent = carbon
        .get_child("sent", NS_CARBONS)
        .and_then(|s| s.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .unwrap_or_else(|| panic!("no sent carbon in {carbon:?}"));
    assert_eq!(body(sent).as_deref(), Some("from the phone"));
    c.stop().await;
}

/// A message for Bob while he is away, accepted by the node Alice uses, waits in the
/// shared store and reaches him when he logs in at the other node.
#[tokio::test]
async fn offline_messages_stored_by_one_node_reach_another() {
    let c = cluster(2).await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    alice.available().await;
    for i in 0..5 {
        alice.send(&chat(BOB, &format!("while away {i}"))).await;
    }
    alice.barrier().await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    bob.available().await;
    for i in 0..5 {
        let got = bob.recv_message().await;
        assert!(
            is_message(&got, "alice@localhost/phone", &format!("while away {i}")),
            "{got:?}"
        );
    }
    // And once only: a new login has nothing waiting.
    bob.close().await;
    let mut again = c.nodes[0].login("bob", "builder", "pc").await;
    again.available().await;
    again.assert_quiet().await;
    c.stop().await;
}

fn number(el: &Element) -> Option<usize> {
    body(el)?.strip_prefix('m')?.parse().ok()
}

/// Numbered chat messages from `from` to Bob's `pc` resource; `from` hears nothing
/// meanwhile (no error, no presence).
async fn send_numbered(from: &mut Client, range: std::ops::Range<usize>) {
    for i in range {
        from.send(&chat("bob@localhost/pc", &format!("m{i}"))).await;
    }
    let heard = from.barrier().await;
    assert!(heard.is_empty(), "{heard:?}");
}

/// Bob at one node again, authenticated and not bound.
async fn bob_at(node: &TestServer) -> Client {
    let mut c = node.connect_starttls().await;
    c.auth_plain("bob", "builder").await.expect("auth");
    c
}

/// Bob's managed stream, acknowledgements held back, and its resumption id.
async fn managed(bob: &mut Client) -> String {
    let enabled = bob.enable_sm().await;
    if let Some(sm) = bob.sm.as_mut() {
        sm.auto_ack = false;
    }
    enabled.attr("id").expect("a resumption id").to_owned()
}

/// Bob's connection to one node dies mid-burst, and his client resumes the stream at the
/// other (as behind a balancer): the session moves there, every message arrives once and
/// in order, Alice never sees him leave, and the stream can move back.
#[tokio::test]
async fn a_stream_resumes_at_another_node() {
    let c = cluster(2).await;
    let (mut alice, mut bob) = friends_on_two_nodes(&c).await;
    let previd = managed(&mut bob).await;
    send_numbered(&mut alice, 0..20).await;
    let mut first = Vec::new();
    while first.len() < 10 {
        if let Some(n) = number(&bob.recv_message().await) {
            first.push(n);
        }
    }
    let h = bob.sm.expect("managed").h;
    // His connection to the second node dies with 10 messages unread; 10 more come.
    drop(bob);
    send_numbered(&mut alice, 20..30).await;

    let mut bob = bob_at(&c.nodes[0]).await;
    let resumed = bob.resume(&previd, h, "bob@localhost/pc").await;
    assert_eq!(resumed.name(), "resumed", "{resumed:?}");
    assert_eq!(resumed.attr("previd"), Some(previd.as_str()));
    let got = bob.recv_until(|el| number(el) == Some(29)).await;
    let all: Vec<usize> = first
        .iter()
        .copied()
        .chain(got.iter().filter_map(number))
        .collect();
    assert_eq!(
        all,
        (0..30).collect::<Vec<_>>(),
        "every message once, in order"
    );
    // The session is at the first node now, available; the second holds nothing.
    let handle = |i: usize| c.nodes[i].handle.as_ref().expect("running");
    assert_eq!(handle(1).session_count(), 0);
    let here = handle(0).sessions();
    assert!(
        here.iter()
            .any(|s| s.jid == "bob@localhost/pc" && s.available),
        "{here:?}"
    );
    // Alice never heard him go (send_numbered checks she hears nothing).
    send_numbered(&mut alice, 30..31).await;
    assert_eq!(number(&bob.recv_message().await), Some(30));

    // And back to the second node.
    let h = bob.sm.expect("managed").h;
    drop(bob);
    send_numbered(&mut alice, 31..33).await;
    let mut bob = bob_at(&c.nodes[1]).await;
    let resumed = bob.resume(&previd, h, "bob@localhost/pc").await;
    assert_eq!(resumed.name(), "resumed", "{resumed:?}");
    let got = bob.recv_until(|el| number(el) == Some(32)).await;
    assert_eq!(got.iter().filter_map(number).collect::<Vec<_>>(), [31, 32]);
    assert_eq!(
        handle(0).session_count(),
        1,
        "alice alone at the first node"
    );
    // A new client of Alice's probes him: the session answers with the presence it
    // brought along.
    let mut tablet = c.nodes[0].login("alice", "wonderland", "tablet").await;
    tablet.available().await;
    tablet
        .recv_where(|el| is_presence(el, "bob@localhost/pc", None))
        .await;
    c.stop().await;
}

/// Nobody else may resume Bob's stream from another node, an id no node knows is refused
/// without a count, and once the stream ended at its node a late resumption at another
/// learns the count it reached (XEP-0198 §5).
#[tokio::test]
async fn a_stream_elsewhere_is_resumed_only_by_its_owner_while_it_lasts() {
    let c = cluster(2).await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    let previd = managed(&mut bob).await;
    bob.available().await;

    let mut thief = c.nodes[0].connect_starttls().await;
    thief.auth_plain("alice", "wonderland").await.expect("auth");
    let failed = thief.resume(&previd, 0, "alice@localhost/x").await;
    assert_eq!(failed.name(), "failed", "{failed:?}");
    assert_eq!(
        failed.attr("h"),
        None,
        "alice learns nothing of bob's stream"
    );
    let mut lost = bob_at(&c.nodes[0]).await;
    let failed = lost.resume("no-such-stream", 0, "bob@localhost/pc").await;
    assert_eq!(failed.name(), "failed", "{failed:?}");
    assert!(failed.has_child("item-not-found", NS_STANZAS));
    // The attempts left his session where it was.
    let here = c.nodes[1].handle.as_ref().expect("running").sessions();
    assert!(here.iter().any(|s| s.jid == "bob@localhost/pc"), "{here:?}");

    bob.close().await;
    let node = &c.nodes[0];
    poll_until(tokio::time::Instant::now() + WAIT, || {
        let previd = previd.clone();
        async move {
            let mut late = bob_at(node).await;
            let failed = late.resume(&previd, 0, "bob@localhost/pc").await;
            match (failed.name(), failed.attr("h")) {
                // His available presence was the one stanza the stream handled.
                ("failed", Some("1")) => Ok(()),
                _ => Err(format!("{failed:?}")),
            }
        }
    })
    .await;
    c.stop().await;
}

/// A second node started with the id a live node holds refuses to start, saying why.
#[tokio::test]
async fn a_node_id_held_by_a_live_node_is_refused() {
    let c = cluster(1).await;
    let mut config = c.nodes[0].config.clone();
    config.data_dir = c.nodes[0].dir.path().join("second");
    std::fs::create_dir(&config.data_dir).unwrap();
    config.listen.c2s = vec!["127.0.0.1:0".parse().unwrap()];
    config.listen.c2s_tls = vec!["127.0.0.1:0".parse().unwrap()];
    for l in [&mut config.listen.component, &mut config.listen.proxy65] {
        *l = vec!["127.0.0.1:0".parse().unwrap()];
    }
    config.listen.https.clear();
    config.listen.http.clear();
    let identity = c.nodes[0].identity.clone();
    let err = outpost_server::ServerHandle::start(config, store(&c.url).await, identity)
        .await
        .err()
        .expect("a second n1 must not start");
    let text = err.to_string();
    assert!(
        text.contains("node id \"n1\" is held by a live node"),
        "{text}"
    );
    c.stop().await;
}

/// A stanza published on the bus that names a sender the publishing node does not hold,
/// one that does not parse, and one from a node not in the cluster are dropped; one from
/// a session the node holds, sent after them on the same connection, arrives.
#[tokio::test]
async fn forged_and_unparsable_bus_messages_are_dropped() {
    let c = cluster(2).await;
    let (mut alice, _bob) = friends_on_two_nodes(&c).await;
    let n2 = c.nodes[0]
        .store
        .cluster_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.node_id == "n2")
        .expect("n2 registered");
    let deliver = |node: &str, epoch: &str, from: &str, text: &str| {
        let msg = format!(
            "<message xmlns='jabber:client' type='chat' from='{from}' \
             to='alice@localhost/phone'><body>{text}</body></message>"
        );
        serde_json::json!({
            "node": node, "epoch": epoch, "t": "deliver",
            "to": "alice@localhost/phone", "msg": {"m": "stanza", "xml": msg},
        })
        .to_string()
    };
    let forged = [
        // n2 does not hold alice's laptop (nobody does).
        deliver("n2", &n2.epoch, "alice@localhost/laptop", "forged sender"),
        // A node that is not in the cluster.
        deliver("n9", "x", "bob@localhost/pc", "unknown node"),
        // An old start of n2.
        deliver("n2", "stale", "bob@localhost/pc", "stale epoch"),
        // Cut in half: not JSON.
        {
            let whole = deliver("n2", &n2.epoch, "bob@localhost/pc", "cut");
            whole[..whole.len() / 2].to_owned()
        },
        deliver("n2", &n2.epoch, "bob@localhost/pc", "<unclosed>"),
    ];
    let mut nats = raw_nats(c.nats.url()).await;
    for payload in forged
        .iter()
        .chain([&deliver("n2", &n2.epoch, "bob@localhost/pc", "genuine")])
    {
        let line = format!("PUB outpost.node.n1 {}\r\n{payload}\r\n", payload.len());
        nats.write_all(line.as_bytes()).await.unwrap();
    }
    nats.write_all(b"PING\r\n").await.unwrap();
    let got = alice.recv_message().await;
    assert!(is_message(&got, "bob@localhost/pc", "genuine"), "{got:?}");
    alice.assert_quiet().await;
    c.stop().await;
}

/// A plain connection to NATS speaking its text protocol, as any client on the bus could.
async fn raw_nats(url: &str) -> tokio::net::TcpStream {
    let addr = url.trim_start_matches("nats://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("NATS");
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await
        .unwrap();
    s
}

const ROOM: &str = "lobby@conference.localhost";

/// Asks the room for its features until a node runs its service again; until then the
/// room answers with a temporary error, not silence.
async fn wait_for_room(c: &mut Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let info = c
            .query(
                "get",
                Some(ROOM),
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        if info.attr("type") == Some("result") {
            return;
        }
        assert_eq!(stanza_error(&info).1, "wait", "{info:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover: {info:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The messages this node has published on NATS since it started.
async fn published(node: &TestServer) -> u64 {
    let status = node.handle.as_ref().unwrap().cluster().await;
    status.expect("a cluster").published
}

/// A room's message for several occupants on another node crosses to that node once, and
/// each occupant gets a copy addressed to it, in order: Alice, on the room's node, says
/// eight things to eight occupants, every other one on the other node.
#[tokio::test]
async fn a_room_s_message_crosses_once_to_the_node_of_its_occupants() {
    const OCCUPANTS: usize = 8;
    const SAID: usize = 8;
    let c = cluster(2).await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    join(&mut alice, ROOM, "alice").await;
    // An instant room (XEP-0045 §10.1.2): open to others from now on.
    let instant = "<query xmlns='http://jabber.org/protocol/muc#owner'>\
                   <x xmlns='jabber:x:data' type='submit'/></query>";
    let reply = alice.query("set", Some(ROOM), instant).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let mut others = Vec::new();
    for i in 0..OCCUPANTS {
        let user = format!("u{i}");
        c.nodes[0].add_user(&user, "occupant").await;
        let mut occupant = c.nodes[1 - i % 2].login(&user, "occupant", "pc").await;
        join(&mut occupant, ROOM, &user).await;
        alice.recv_presence_from(&format!("{ROOM}/{user}")).await;
        others.push(occupant);
    }
    let before = published(&c.nodes[0]).await;
    let sent: Vec<String> = (0..SAID).map(|i| format!("said {i}")).collect();
    for text in &sent {
        alice
            .send(&format!(
                "<message to='{ROOM}' type='groupchat'><body>{text}</body></message>"
            ))
            .await;
    }
    for occupant in &mut others {
        let got = occupant
            .recv_until(|el| body(el).as_deref() == sent.last().map(String::as_str))
            .await;
        let copies: Vec<&Element> = got
            .iter()
            .filter(|el| el.attr("from") == Some(&*format!("{ROOM}/alice")))
            .collect();
        let bodies: Vec<String> = copies.iter().filter_map(|el| body(el)).collect();
        assert_eq!(bodies, sent);
        assert!(
            copies
                .iter()
                .all(|el| el.attr("to") == Some(&*occupant.jid)),
            "{copies:?}"
        );
    }
    // One by one, the copies for the other node alone would be SAID * OCCUPANTS / 2.
    let crossed = published(&c.nodes[0]).await - before;
    assert!(
        crossed < (SAID * OCCUPANTS / 4) as u64,
        "{crossed} messages on NATS for {SAID} room messages to {} occupants elsewhere",
        OCCUPANTS / 2
    );
    c.stop().await;
}

/// Joins `room` as `nick`, reading up to the subject (or an error), which ends a join.
async fn join(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    c.recv_until(|el| el.has_child("subject", NS_CLIENT) || el.attr("type") == Some("error"))
        .await
}

/// The room's message `text`, keeping what came before it (the two nodes' messages may
/// arrive in either order).
async fn said(c: &mut Client, text: &str) -> Element {
    c.recv_stashing(|el| el.attr("type") == Some("groupchat") && body(el).as_deref() == Some(text))
        .await
}

/// One room for occupants on two nodes: the node where it was created runs it, the other
/// forwards to it; messages, history and the room's archive work from both. When the
/// node running it stops, the other takes the room over from the store and the room goes
/// on with its history.
#[tokio::test]
async fn a_room_spans_nodes_and_survives_its_node() {
    let mut c = cluster(2).await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    join(&mut alice, ROOM, "alice").await;
    // Persistent, so that it outlives its service's node.
    let form = "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'>\
                <value>1</value></field></x>";
    let reply = alice
        .query(
            "set",
            Some(ROOM),
            &format!("<query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query>"),
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let got = join(&mut bob, ROOM, "bob").await;
    assert!(
        got.iter()
            .any(|p| p.attr("from") == Some("lobby@conference.localhost/alice"))
    );
    alice
        .recv_presence_from("lobby@conference.localhost/bob")
        .await;

    bob.send("<message to='lobby@conference.localhost' type='groupchat' id='b1'><body>from n2</body></message>")
        .await;
    alice.send("<message to='lobby@conference.localhost' type='groupchat' id='a1'><body>from n1</body></message>")
        .await;
    for client in [&mut alice, &mut bob] {
        said(client, "from n2").await;
        said(client, "from n1").await;
    }
    let (results, fin) = bob.mam(Some(ROOM), "").await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    let said_order: Vec<String> = results.iter().filter_map(|(_, m)| body(m)).collect();
    assert_eq!(said_order.len(), 2, "{results:?}");

    // The node running the room stops; the other takes it over at the next stanza.
    c.nodes[0].stop().await;
    drop(alice);
    wait_for_room(&mut bob).await;
    let got = join(&mut bob, ROOM, "bob").await;
    let history: Vec<String> = got.iter().filter_map(body).collect();
    assert_eq!(
        history, said_order,
        "the room's history, in its order: {got:?}"
    );
    bob.send("<message to='lobby@conference.localhost' type='groupchat' id='b2'><body>after</body></message>")
        .await;
    said(&mut bob, "after").await;
    c.stop().await;
}

/// Makes `room` persistent and public and names it, as its owner.
async fn configure(c: &mut Client, room: &str, name: &str) {
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'>\
         <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
         <field var='muc#roomconfig_publicroom'><value>1</value></field>\
         <field var='muc#roomconfig_roomname'><value>{name}</value></field></x>"
    );
    let reply = c
        .query(
            "set",
            Some(room),
            &format!("<query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query>"),
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

/// The name a room's disco#info gives, or the error's type.
async fn room_name(c: &mut Client, room: &str) -> Result<String, String> {
    let info = c
        .query(
            "get",
            Some(room),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    if info.attr("type") != Some("result") {
        return Err(stanza_error(&info).1);
    }
    let identity = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .and_then(|q| q.get_child("identity", "http://jabber.org/protocol/disco#info"));
    Ok(identity
        .and_then(|i| i.attr("name"))
        .unwrap_or("")
        .to_owned())
}

/// The node holding the lease of `room`.
async fn lease_holder(pg: &Arc<dyn Store>, room: &str) -> Option<String> {
    let leases = pg.cluster_leases().await.expect("leases");
    let name = format!("room:{room}");
    leases
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.node_id)
}

/// The rooms the service lists (disco#items, XEP-0045 §6.3).
async fn listed(c: &mut Client) -> Vec<String> {
    let ns = "http://jabber.org/protocol/disco#items";
    let items = c
        .query(
            "get",
            Some("conference.localhost"),
            &format!("<query xmlns='{ns}'/>"),
        )
        .await;
    let query = items.get_child("query", ns);
    query.map_or_else(Vec::new, |q| {
        q.children()
            .filter_map(|i| i.attr("jid").map(str::to_owned))
            .collect()
    })
}

/// Rooms spread over the nodes: each runs on the node where it was created (its lease),
/// both nodes list both, and occupants of both nodes talk in both. A room created on the
/// second node after the first started is taken over by the first, from the store, when
/// the second stops: its name, configuration and history come along.
#[tokio::test]
async fn each_room_runs_on_one_node_and_rooms_spread_over_the_nodes() {
    const NORTH: &str = "north@conference.localhost";
    const SOUTH: &str = "south@conference.localhost";
    let mut c = cluster(2).await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    join(&mut alice, NORTH, "alice").await;
    configure(&mut alice, NORTH, "The North").await;
    join(&mut bob, SOUTH, "bob").await;
    configure(&mut bob, SOUTH, "The South").await;
    let pg = store(&c.url).await;
    assert_eq!(lease_holder(&pg, NORTH).await.as_deref(), Some("n1"));
    assert_eq!(lease_holder(&pg, SOUTH).await.as_deref(), Some("n2"));
    // What operators see (`outpost admin cluster`): one room each.
    let status = c.nodes[0].handle.as_ref().expect("running").cluster().await;
    let rooms: Vec<(String, u64)> = status
        .expect("a cluster node")
        .nodes
        .into_iter()
        .map(|n| (n.node_id, n.rooms))
        .collect();
    assert_eq!(rooms, [("n1".to_owned(), 1), ("n2".to_owned(), 1)]);

    join(&mut alice, SOUTH, "alice").await;
    join(&mut bob, NORTH, "bob").await;
    for (room, text) in [(NORTH, "in the north"), (SOUTH, "in the south")] {
        alice
            .send(&format!(
                "<message to='{room}' type='groupchat'><body>{text}</body></message>"
            ))
            .await;
        for client in [&mut alice, &mut bob] {
            said(client, text).await;
        }
    }
    // Either node lists the rooms of both.
    for client in [&mut alice, &mut bob] {
        assert_eq!(listed(client).await, [NORTH, SOUTH]);
    }

    // The second node stops: the first takes the south over at its next stanza.
    c.nodes[1].stop().await;
    drop(bob);
    let deadline = tokio::time::Instant::now() + WAIT;
    let name = loop {
        match room_name(&mut alice, SOUTH).await {
            Ok(name) => break name,
            // Until the stopped node's goodbye is heard.
            Err(kind) if kind == "wait" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(kind) => panic!("no takeover: {kind}"),
        }
    };
    assert_eq!(name, "The South");
    let got = join(&mut alice, SOUTH, "alice").await;
    let history: Vec<String> = got.iter().filter_map(body).collect();
    assert_eq!(history, ["in the south"], "{got:?}");
    assert_eq!(lease_holder(&pg, SOUTH).await.as_deref(), Some("n1"));
    c.stop().await;
}

/// Whether the lease of `room` is (`want`) or is not in the registry.
async fn room_lease(pg: Arc<dyn Store>, room: &str, want: bool) -> Result<(), String> {
    let leases = pg.cluster_leases().await.map_err(|e| e.to_string())?;
    match leases.iter().any(|l| l.name == format!("room:{room}")) == want {
        true => Ok(()),
        false => Err(format!("{leases:?}")),
    }
}

/// No lease stays for a room that is not there: a room that does not exist is said not to
/// by the node asked, which keeps no lease for it; a temporary room gives its lease back
/// once its last occupant leaves, and is then said not to exist at either node.
#[tokio::test]
async fn rooms_that_are_not_there_hold_no_lease() {
    const POP: &str = "pop@conference.localhost";
    let c = cluster(2).await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    let pg = store(&c.url).await;
    assert_eq!(
        room_name(&mut bob, "nowhere@conference.localhost").await,
        Err("cancel".to_owned())
    );
    room_lease(pg.clone(), "nowhere@conference.localhost", false)
        .await
        .expect("no lease for a room that does not exist");

    join(&mut alice, POP, "alice").await;
    room_lease(pg.clone(), POP, true)
        .await
        .expect("the room's lease");
    alice
        .send(&format!("<presence to='{POP}/alice' type='unavailable'/>"))
        .await;
    alice
        .recv_where(|el| is_presence(el, &format!("{POP}/alice"), Some("unavailable")))
        .await;
    poll_until(tokio::time::Instant::now() + WAIT, || {
        room_lease(pg.clone(), POP, false)
    })
    .await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(room_name(client, POP).await, Err("cancel".to_owned()));
    }
    c.stop().await;
}

/// A node with federation on (`b.test` is the peer), or the peer itself.
fn federated(c: &mut outpost_server::config::Config, domain: &str, dns: std::net::SocketAddr) {
    c.domains = vec![domain.to_owned()];
    c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
    c.federation.enabled = true;
    c.federation.srv_lookup = false;
    c.federation.dns_server = Some(dns);
    c.federation.retry_initial_secs = 1;
    c.federation.retry_max_secs = 1;
    c.federation.probe_interval_secs = 1;
    c.federation.dialback_secret = Some(format!("{domain}-dialback-secret-for-tests"));
}

/// Two federated nodes of `localhost` and two peer servers, `b.test` and `c.test`, that
/// reach the domain at the second node.
async fn federated_cluster() -> (NatsServer, TestServer, TestServer, [TestServer; 2]) {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats");
    let url = database().await;
    let dns = dns::DnsServer::start().await;
    let node = |id: &'static str| {
        let (url, nats) = (url.clone(), nats.url().to_owned());
        move |c: &mut outpost_server::config::Config| {
            cluster_config(c, &url, &nats, id);
            federated(c, "localhost", dns.addr);
        }
    };
    let n1 = TestServer::start_with_store(store(&url).await, node("n1"), None).await;
    let n2 = TestServer::start_with_store(store(&url).await, node("n2"), None).await;
    let b = TestServer::start_with(|c| federated(c, "b.test", dns.addr)).await;
    let c = TestServer::start_with(|c| federated(c, "c.test", dns.addr)).await;
    for peer in [&b, &c] {
        for n in [&n1, &n2] {
            let at = peer.s2s.expect("peer s2s").into();
            n.handle
                .as_ref()
                .unwrap()
                .set_peer_address(peer.domain(), at);
        }
        // The peers reach the domain at n2: a peer's dialback key is verified for n2 by
        // the node that runs the link to that peer.
        let at_n2 = n2.s2s.expect("n2 s2s").into();
        peer.handle
            .as_ref()
            .unwrap()
            .set_peer_address("localhost", at_n2);
    }
    (nats, n1, n2, [b, c])
}

/// The node that holds the lease of a cluster's link from `local` to `remote`, once one
/// holds it and it is not `not`.
pub(crate) async fn link_node(pg: &dyn Store, (local, remote): (&str, &str), not: &str) -> String {
    let name = format!("s2s:{local}/{remote}");
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let leases = pg.cluster_leases().await.map_err(|e| e.to_string())?;
        leases
            .into_iter()
            .find(|l| l.name == name && l.node_id != not)
            .map(|l| l.node_id)
            .ok_or_else(|| format!("nobody but {not:?} runs the link {name}"))
    })
    .await
}

/// The state of `node`'s link to `remote` (`idle` for one only the shared outbox knows;
/// `None`: neither knows it).
async fn link_state(node: &TestServer, remote: &str) -> Option<String> {
    let links = node.handle.as_ref().unwrap().link_statuses().await.unwrap();
    let link = links.into_iter().find(|l| l.remote == remote);
    link.map(|l| l.state.as_str().to_owned())
}

/// Sends `text` from `from` to `to` and waits for it there.
async fn chat_across(from: &mut Client, to: &mut Client, text: &str) {
    let (from_jid, to_bare) = (
        from.jid.clone(),
        to.jid.split('/').next().unwrap().to_owned(),
    );
    from.send(&chat(&to_bare, text)).await;
    let got = to.recv_where(|el| is_chat_from(el, &from_jid)).await;
    assert_eq!(body(&got).as_deref(), Some(text));
}

/// `from` sends `to` five messages, `<prefix> 0` to `<prefix> 4`: they arrive once, in
/// order.
async fn burst_arrives(from: &mut Client, to: &mut Client, prefix: &str) {
    let to_bare = to.jid.split('/').next().unwrap().to_owned();
    let sent: Vec<String> = (0..5).map(|i| format!("{prefix} {i}")).collect();
    for text in &sent {
        from.send(&chat(&to_bare, text)).await;
    }
    let last = sent.last().cloned();
    let got = to.recv_until(|el| body(el) == last).await;
    let from_jid = from.jid.clone();
    let arrived: Vec<String> = got
        .iter()
        .filter(|el| is_chat_from(el, &from_jid))
        .filter_map(body)
        .filter(|b| b.starts_with(prefix))
        .collect();
    assert_eq!(arrived, sent);
}

/// Each link to another server runs on one node, the one where its traffic started:
/// Carol, at n1, writes to b.test first and Alice, at n2, to c.test, so n1 runs the link
/// to b.test and n2 the one to c.test. Each user's messages to the other peer leave
/// through the other node's link; the peers, connecting to n2, are verified over each
/// link's node, and their answers come in at n2. When n1 stops, n2 takes its link over
/// and drains what was queued meanwhile, once and in order.
#[tokio::test]
async fn each_link_runs_where_its_traffic_started_and_moves_when_its_node_stops() {
    let (nats, mut n1, n2, [b, c]) = federated_cluster().await;
    n1.add_user("alice", "wonderland").await;
    n1.add_user("carol", "singer").await;
    b.add_user("bob", "builder").await;
    c.add_user("dave", "diver").await;
    let mut alice = n2.login("alice", "wonderland", "phone").await;
    let mut carol = n1.login("carol", "singer", "tab").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    let mut dave = c.login("dave", "diver", "pc").await;
    for u in [&mut alice, &mut carol, &mut bob, &mut dave] {
        u.available().await;
    }
    chat_across(&mut carol, &mut bob, "carol first").await;
    chat_across(&mut alice, &mut dave, "alice first").await;
    let pg = n1.store.as_ref();
    assert_eq!(link_node(pg, ("localhost", "b.test"), "").await, "n1");
    assert_eq!(link_node(pg, ("localhost", "c.test"), "").await, "n2");
    assert_eq!(link_state(&n1, "b.test").await.as_deref(), Some("up"));
    assert_eq!(link_state(&n2, "c.test").await.as_deref(), Some("up"));
    assert_ne!(
        link_state(&n1, "c.test").await.as_deref(),
        Some("up"),
        "n1 runs no link to c.test"
    );
    assert_ne!(
        link_state(&n2, "b.test").await.as_deref(),
        Some("up"),
        "n2 runs no link to b.test"
    );

    chat_across(&mut alice, &mut bob, "through n1's link").await;
    chat_across(&mut bob, &mut alice, "back through n2").await;
    chat_across(&mut carol, &mut dave, "through n2's link").await;
    chat_across(&mut dave, &mut carol, "back through n2 to n1").await;
    let status = n2
        .handle
        .as_ref()
        .unwrap()
        .cluster()
        .await
        .expect("a cluster");
    let links: Vec<(String, u64)> = status
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.links))
        .collect();
    assert_eq!(links, [("n1".to_owned(), 1), ("n2".to_owned(), 1)]);

    n1.stop().await;
    burst_arrives(&mut alice, &mut bob, "after").await;
    assert_eq!(
        link_node(n2.store.as_ref(), ("localhost", "b.test"), "n1").await,
        "n2"
    );
    n2.wait_for_empty_outbox("b.test").await;
    chat_across(&mut bob, &mut alice, "still there").await;
    drop((n2, b, c, nats));
}

/// A node that loses a link's lease (here, to a node that is not there) stops that link;
/// what is queued for the peer meanwhile waits, and once the lease is free again a node
/// takes it and drains the queue.
#[tokio::test]
async fn a_link_whose_lease_is_lost_stops_and_its_queue_waits_for_the_next_owner() {
    let (nats, n1, n2, [b, c]) = federated_cluster().await;
    n1.add_user("carol", "singer").await;
    b.add_user("bob", "builder").await;
    let mut carol = n1.login("carol", "singer", "tab").await;
    let mut bob = b.login("bob", "builder", "pc").await;
    bob.available().await;
    chat_across(&mut carol, &mut bob, "before").await;
    let pg = n1.store.as_ref();
    assert_eq!(link_node(pg, ("localhost", "b.test"), "").await, "n1");
    let name = "s2s:localhost/b.test";
    let leases = pg.cluster_leases().await.unwrap();
    let held = leases.iter().find(|l| l.name == name).expect("lease");
    pg.lease_release(name, &held.node_id, &held.epoch)
        .await
        .unwrap();
    let far = outpost_store::ClusterLease {
        name: name.to_owned(),
        node_id: "n9".to_owned(),
        epoch: "elsewhere".to_owned(),
        until_ms: i64::MAX,
    };
    assert_eq!(pg.lease_take(&far, 0).await.unwrap().node_id, "n9");
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match link_state(&n1, "b.test").await.as_deref() {
            Some("up") => Err("n1 still runs the link".to_owned()),
            _ => Ok(()),
        }
    })
    .await;

    carol
        .send(&chat("bob@b.test", "while nobody runs it"))
        .await;
    let before = carol.barrier().await;
    assert!(
        before.iter().all(|el| el.attr("type") != Some("error")),
        "the message was refused: {before:?}"
    );
    let queued = pg
        .outbox_peek("localhost", "b.test", None, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    pg.lease_release(name, "n9", "elsewhere").await.unwrap();
    let got = bob
        .recv_where(|el| body(el).as_deref() == Some("while nobody runs it"))
        .await;
    assert!(is_chat_from(&got, "carol@localhost/tab"), "{got:?}");
    drop((n1, n2, c, nats));
}

/// NATS goes away: each node serves its own sessions (Alice and Carol, both on the first
/// node, go on chatting), and each takes the other's sessions for gone (Alice sees Bob
/// unavailable). NATS comes back on the same port: the nodes meet again, their sessions
/// tell each other their presence again, and messages cross nodes again.
#[tokio::test]
async fn nodes_cut_from_nats_serve_their_own_and_meet_again() {
    let mut c = cluster(2).await;
    c.nodes[0].add_user("carol", "singer").await;
    let (mut alice, mut bob) = friends_on_two_nodes(&c).await;
    let mut carol = c.nodes[0].login("carol", "singer", "tab").await;
    carol.available().await;

    let port = c.nats.port();
    c.nats.stop();
    alice
        .recv_where(|el| is_presence(el, "bob@localhost/pc", Some("unavailable")))
        .await;
    alice
        .send(&chat("carol@localhost", "the bus is down"))
        .await;
    let got = carol.recv_message().await;
    assert!(
        is_message(&got, "alice@localhost/phone", "the bus is down"),
        "{got:?}"
    );

    c.nats = tokio::task::spawn_blocking(move || NatsServer::start_on(Some(port)))
        .await
        .expect("nats again");
    alice
        .recv_where(|el| is_presence(el, "bob@localhost/pc", None))
        .await;
    bob.recv_where(|el| is_presence(el, "alice@localhost/phone", None))
        .await;
    alice.send(&chat(BOB, "and up again")).await;
    let got = bob.recv_message().await;
    assert!(
        is_message(&got, "alice@localhost/phone", "and up again"),
        "{got:?}"
    );
    c.stop().await;
}

/// Three nodes, the third started once the others hold sessions: it learns both
/// directories at once (Carol, logging in there, sees Alice and Bob available and writes
/// to Bob), and when Bob's node stops, Alice and Carol, on the two others, see him go.
#[tokio::test]
async fn a_third_node_learns_the_others_and_sees_one_leave() {
    let mut c = cluster(2).await;
    c.nodes[0].add_user("carol", "singer").await;
    let (mut alice, mut bob) = friends_on_two_nodes(&c).await;
    let n3 = node(&c.url, c.nats.url(), "n3").await;
    let mut carol = n3.login("carol", "singer", "tab").await;
    carol.roster_get().await;
    carol.available().await;
    subscribe(&mut carol, "carol@localhost", &mut alice, ALICE).await;
    subscribe(&mut carol, "carol@localhost", &mut bob, BOB).await;
    subscribe(&mut alice, ALICE, &mut carol, "carol@localhost").await;
    subscribe(&mut bob, BOB, &mut carol, "carol@localhost").await;

    carol.send(&chat(BOB, "from the third node")).await;
    let got = bob.recv_message().await;
    assert!(
        is_message(&got, "carol@localhost/tab", "from the third node"),
        "{got:?}"
    );

    c.nodes[1].stop().await;
    for watcher in [&mut alice, &mut carol] {
        watcher
            .recv_where(|el| is_presence(el, "bob@localhost/pc", Some("unavailable")))
            .await;
    }
    let mut n3 = n3;
    n3.stop().await;
    c.stop().await;
}

/// Two nodes archiving at once never give out the same archive id (each takes a tag of
/// its own).
#[tokio::test]
async fn archive_ids_of_two_nodes_never_meet() {
    const EACH: usize = 200;
    let c = cluster(2).await;
    c.nodes[0].add_user("carol", "singer").await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    for i in 0..EACH {
        alice.send(&chat("carol@localhost", &format!("a{i}"))).await;
        bob.send(&chat("carol@localhost", &format!("b{i}"))).await;
    }
    for client in [&mut alice, &mut bob] {
        let acked = client.barrier().await;
        let refused = acked
            .iter()
            .filter(|el| el.attr("type") == Some("error"))
            .count();
        assert_eq!(
            refused,
            0,
            "messages refused; the first: {:?}",
            acked.first()
        );
    }
    let mut carol = c.nodes[1].login("carol", "singer", "tab").await;
    let rsm = "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max></set>";
    let (first, fin) = carol.mam(None, rsm).await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    let last = first.last().map(|(id, _)| id.clone()).expect("a page");
    let after = format!(
        "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max><after>{last}</after></set>"
    );
    let (second, _) = carol.mam(None, &after).await;
    let ids: std::collections::BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        ids.len(),
        2 * EACH,
        "every message archived under an id of its own"
    );
    c.stop().await;
}

/// A user's archiving preferences set at one node hold at the other: Alice asks for
/// nothing to be archived at her node, and what Bob then writes her at his is not. The
/// change is answered once every node has read it, so nothing waits after it.
#[tokio::test]
async fn preferences_set_at_one_node_hold_at_the_other() {
    let c = cluster(2).await;
    let mut alice = c.nodes[0].login("alice", "wonderland", "phone").await;
    let mut bob = c.nodes[1].login("bob", "builder", "pc").await;
    bob.send(&chat(ALICE, "archived")).await;
    bob.barrier().await;
    let prefs = "<prefs xmlns='urn:xmpp:mam:2' default='never'/>";
    let set = alice.query("set", None, prefs).await;
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    bob.send(&chat(ALICE, "not for her archive")).await;
    bob.barrier().await;
    let with = "<x xmlns='jabber:x:data' type='submit'><field var='with'>\
                <value>bob@localhost</value></field></x>";
    let (kept, _) = alice.mam(None, with).await;
    let bodies: Vec<String> = kept.iter().filter_map(|(_, m)| body(m)).collect();
    assert_eq!(bodies, ["archived"]);
    c.stop().await;
}
