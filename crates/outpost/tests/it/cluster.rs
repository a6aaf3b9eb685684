//! A cluster of `outpost serve` processes (`[cluster]`) on one real PostgreSQL database and
//! a real NATS server (the test kit starts both): a node killed with SIGKILL in the middle
//! of a burst of messages, what its users' contacts see, where the messages are, and what
//! `outpost admin cluster` says.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_proto::minidom::Element;
use outpost_testkit::blocking::Client;
use outpost_testkit::nats::NatsServer;
use outpost_testkit::{NS_DELAY, body};

use super::admin_replication::{free_port, wait_for};
use super::common::{Server, any_error, login, register};

const DOMAIN: &str = "cl.test";

/// Node `id` of the cluster on `url` and `nats`, in `dir`.
fn node(dir: &Path, id: &str, url: &str, nats: &str) -> Server {
    node_with(dir, id, url, nats, "")
}

/// [`node`], with more configuration after `[cluster]`: a `[federation]` table, which
/// also opens a server-to-server listener.
fn node_with(dir: &Path, id: &str, url: &str, nats: &str, more: &str) -> Server {
    node_of(dir, id, url, nats, &format!("domains = [{DOMAIN:?}]"), more)
}

/// [`node_with`], with `top` at the top level (the domains, a role).
fn node_of(dir: &Path, id: &str, url: &str, nats: &str, top: &str, more: &str) -> Server {
    let federation = more.contains("[federation]");
    let s2s = if federation {
        "[\"127.0.0.1:0\"]"
    } else {
        "[]"
    };
    let toml = format!(
        "{top}\ndata_dir = {:?}\n\
         [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = []\ns2s = {s2s}\nproxy65 = []\nhttps = []\nhttp = []\n\
         [registration]\nenabled = true\n\
         [auth]\nallow_plaintext_without_tls = true\nscram_iterations = 4096\n\
         [log]\nlevel = \"info\"\n\
         [storage]\nbackend = \"postgres\"\nurl = {url:?}\n\
         [cluster]\nnats_url = {nats:?}\nnode_id = {id:?}\n{more}",
        dir.join(format!("{id}-data")),
    );
    Server::start_toml(dir, id, &toml, federation)
}

/// A NATS server, a fresh database, and nodes `n1` and `n2` on them, in a new directory.
fn two_nodes() -> (NatsServer, tempfile::TempDir, Server, Server) {
    let nats = NatsServer::start();
    let pg = outpost_testkit::postgres::shared();
    let url = pg.url(&pg.create_database());
    let dir = tempfile::tempdir().expect("tempdir");
    let n1 = node(dir.path(), "n1", &url, nats.url());
    let n2 = node(dir.path(), "n2", &url, nats.url());
    (nats, dir, n1, n2)
}

fn admin_cluster(dir: &Path, id: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["admin", "cluster", "--config"])
        .arg(dir.join(format!("{id}.toml")))
        .output()
        .expect("outpost admin cluster");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `node` in `admin cluster`'s table.
fn row<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("no {node} in\n{table}"))
}

fn is_presence(el: &Element, from: &str, ty: Option<&str>) -> bool {
    el.name() == "presence" && el.attr("from") == Some(from) && el.attr("type") == ty
}

/// `a` asks for `b`'s presence and `b` approves.
fn subscribe(a: &mut Client, a_jid: &str, b: &mut Client, b_jid: &str) {
    a.send(&format!("<presence to='{b_jid}' type='subscribe'/>"));
    b.recv_until(|el| is_presence(el, a_jid, Some("subscribe")));
    b.send(&format!("<presence to='{a_jid}' type='subscribed'/>"));
}

/// Alice on `n1` and Bob on `n2`, available and subscribed to each other.
fn friends(n1: &Server, n2: &Server) -> (Client, Client) {
    let (alice_jid, bob_jid) = (format!("alice@{DOMAIN}"), format!("bob@{DOMAIN}"));
    register(n1.c2s, DOMAIN, "alice");
    register(n1.c2s, DOMAIN, "bob");
    let mut alice = login(n1.c2s, DOMAIN, "alice");
    let mut bob = login(n2.c2s, DOMAIN, "bob");
    alice.send("<presence/>");
    bob.send("<presence/>");
    subscribe(&mut alice, &alice_jid, &mut bob, &bob_jid);
    alice.recv_until(|el| is_presence(el, &format!("{bob_jid}/r"), None));
    subscribe(&mut bob, &bob_jid, &mut alice, &alice_jid);
    (alice, bob)
}

/// The messages in the user's archive (one page of up to 250).
fn archive(c: &mut Client) -> Vec<Element> {
    let (archived, fin) = c.run(async |c| {
        let rsm = "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max></set>";
        c.mam(None, rsm).await
    });
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    archived.into_iter().map(|(_, m)| m).collect()
}

/// The numbers of the `message N` bodies among `stanzas`.
fn numbers(stanzas: &[Element]) -> Vec<usize> {
    stanzas
        .iter()
        .filter_map(body)
        .filter_map(|b| b.strip_prefix("message ")?.parse().ok())
        .collect()
}

/// Bob's node is killed with SIGKILL while Alice, on the other node, sends him a burst.
/// Every message she had acknowledged is in his archive, in order; those sent once his
/// node was taken for dead wait in his offline store; she sees him unavailable within
/// seconds, and available again when he logs in at her node; `admin cluster` shows the
/// dead node silent.
#[test]
fn a_node_killed_mid_burst_loses_nothing_and_its_users_move() {
    const COUNT: usize = 100;
    let (_nats, dir, n1, mut n2) = two_nodes();
    let bob_jid = format!("bob@{DOMAIN}");
    let (mut alice, _bob_on_n2) = friends(&n1, &n2);
    let bob_full = format!("{bob_jid}/r");
    let table = admin_cluster(dir.path(), "n1");
    assert!(
        table.contains("node n1: NATS connected, PostgreSQL answering"),
        "{table}"
    );
    assert!(row(&table, "n2").contains(" ago"), "n2 heard: {table}");

    for i in 0..COUNT {
        if i == COUNT / 2 {
            n2.kill();
        }
        alice.send(&format!(
            "<message to='{bob_jid}' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    let acked = alice.barrier();
    assert!(!any_error(&acked), "a message was refused: {acked:?}");
    let killed = Instant::now();
    alice.recv_until(|el| is_presence(el, &bob_full, Some("unavailable")));
    let seen_after = killed.elapsed();
    assert!(
        seen_after < Duration::from_secs(10),
        "unavailable after {seen_after:?}"
    );
    let table = admin_cluster(dir.path(), "n1");
    assert!(row(&table, "n2").contains("not heard"), "{table}");
    // Bob is nowhere now: this one waits for him.
    alice.send(&format!(
        "<message to='{bob_jid}' type='chat' id='late'><body>while you were gone</body></message>"
    ));
    assert!(!any_error(&alice.barrier()));

    // Bob's client reconnects, to the node that is left.
    let mut bob = login(n1.c2s, DOMAIN, "bob");
    bob.send("<presence/>");
    alice.recv_until(|el| is_presence(el, &bob_full, None));
    let offline = bob.barrier();
    let late = offline
        .iter()
        .find(|el| body(el).as_deref() == Some("while you were gone"))
        .unwrap_or_else(|| panic!("not kept offline: {offline:?}"));
    assert!(late.has_child("delay", NS_DELAY), "{late:?}");
    assert_eq!(
        numbers(&archive(&mut bob)),
        (0..COUNT).collect::<Vec<_>>(),
        "every acknowledged message is in the archive, once, in order"
    );
    // Some of the burst may also have waited offline (sent once n2 was taken for dead):
    // none twice.
    let kept = numbers(&offline);
    let unique: BTreeSet<usize> = kept.iter().copied().collect();
    assert_eq!(unique.len(), kept.len(), "offline twice: {kept:?}");
    drop(n1);
}

/// A TCP load balancer in front of the cluster's server-to-server listeners, as a peer
/// server reaches the domain: each connection goes to the first node that accepts it.
struct Balancer {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Balancer {
    fn start() -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let backends: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let to = backends.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let candidates = to.lock().expect("backends").clone();
                let Some(server) = candidates.iter().find_map(|a| TcpStream::connect(a).ok())
                else {
                    continue;
                };
                for (mut from, mut into) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Balancer { addr, backends }
    }

    fn serve(&self, nodes: &[SocketAddr]) {
        *self.backends.lock().expect("backends") = nodes.to_vec();
    }
}

/// Two federated nodes of the domain behind a load balancer, and a peer server `peer.test`
/// (another Outpost). The link to the peer runs on the node where its first stanza starts.
fn federated_cluster(dir: &Path) -> (NatsServer, Balancer, Server, Server, Server) {
    let nats = NatsServer::start();
    let pg = outpost_testkit::postgres::shared();
    let url = pg.url(&pg.create_database());
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let balancer = Balancer::start();
    let peer = Server::start(dir, "peer.test", any, &[(DOMAIN, balancer.addr)]);
    let federation = format!(
        "[federation]\nenabled = true\nrequire_tls = true\nsrv_lookup = false\n\
         dns_server = \"{}\"\nretry_initial_secs = 1\nretry_max_secs = 1\n\
         probe_interval_secs = 1\ndialback_secret = \"one-secret-for-all-nodes\"\n\
         [federation.peers]\n\"peer.test\" = \"{}\"\n",
        outpost_testkit::dns::nxdomain_server(),
        peer.s2s
    );
    let n1 = node_with(dir, "n1", &url, nats.url(), &federation);
    let n2 = node_with(dir, "n2", &url, nats.url(), &federation);
    balancer.serve(&[n1.s2s, n2.s2s]);
    (nats, balancer, peer, n1, n2)
}

/// A node dies with its user's contact on another server subscribed to her, and with the
/// link to that server, which her first message made there: the other node keeps her unavailable
/// presence until the dead node's lease on the link ends, takes the link and tells that
/// server.
#[test]
fn a_dead_node_s_users_go_unavailable_at_federated_contacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_nats, _balancer, peer, n1, mut n2) = federated_cluster(dir.path());
    register(n1.c2s, DOMAIN, "alice");
    register(peer.c2s, "peer.test", "bob");
    let mut alice = login(n2.c2s, DOMAIN, "alice");
    let mut bob = login(peer.c2s, "peer.test", "bob");
    alice.send("<presence/>");
    bob.send("<presence/>");
    // Her message is the link's first stanza: it runs at her node.
    alice.send("<message to='bob@peer.test' type='chat' id='hi'><body>hello</body></message>");
    bob.recv_until(|el| body(el).as_deref() == Some("hello"));
    let alice_jid = format!("alice@{DOMAIN}");
    subscribe(&mut bob, "bob@peer.test", &mut alice, &alice_jid);
    let alice_full = format!("{alice_jid}/r");
    bob.recv_until(|el| is_presence(el, &alice_full, None));
    let table = admin_cluster(dir.path(), "n1");
    assert!(row(&table, "n2").ends_with("1 link"), "{table}");
    n2.kill();
    bob.recv_until(|el| is_presence(el, &alice_full, Some("unavailable")));
    let table = admin_cluster(dir.path(), "n1");
    assert!(row(&table, "n1").ends_with("1 link"), "{table}");
    drop(n1);
}

/// The node running the link to a peer server (another Outpost, reaching the cluster
/// through a load balancer) is killed with SIGKILL while a user on the other node sends a
/// burst to a user there: the other node takes the link over once the dead one's lease
/// ends, and the peer's user gets every message once, in order; his answers reach her
/// through the node that is left.
#[test]
fn a_federated_peer_keeps_talking_while_the_link_owner_is_killed() {
    const COUNT: usize = 60;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_nats, _balancer, peer, mut n1, n2) = federated_cluster(dir.path());
    register(n1.c2s, DOMAIN, "alice");
    register(n1.c2s, DOMAIN, "carol");
    register(peer.c2s, "peer.test", "bob");
    let mut alice = login(n2.c2s, DOMAIN, "alice");
    let mut bob = login(peer.c2s, "peer.test", "bob");
    bob.send("<presence/>");
    // Carol, at n1, writes first: the link runs there.
    let mut carol = login(n1.c2s, DOMAIN, "carol");
    carol.send("<message to='bob@peer.test' type='chat' id='hi'><body>hello</body></message>");
    bob.recv_until(|el| body(el).as_deref() == Some("hello"));
    let table = admin_cluster(dir.path(), "n2");
    assert!(row(&table, "n1").ends_with("1 link"), "{table}");

    for i in 0..COUNT {
        if i == COUNT / 2 {
            n1.kill();
        }
        alice.send(&format!(
            "<message to='bob@peer.test' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    assert!(!any_error(&alice.barrier()), "a message was refused");
    let got = bob.recv_until(|el| body(el).as_deref() == Some(&*format!("message {}", COUNT - 1)));
    assert_eq!(
        numbers(&got),
        (0..COUNT).collect::<Vec<_>>(),
        "all, once, in order"
    );
    bob.send(&format!(
        "<message to='alice@{DOMAIN}/r' type='chat' id='back'><body>got them</body></message>"
    ));
    alice.recv_until(|el| body(el).as_deref() == Some("got them"));
    drop((n2, peer));
}

/// Joins `room` as `nick`, reading up to the subject (which ends a join) or an error.
fn join_room(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ));
    c.recv_until(|el| el.has_child("subject", "jabber:client") || el.attr("type") == Some("error"))
}

/// The type of a disco#info error from `room`, or `None` when it answers.
fn room_error_type(c: &mut Client, room: &str) -> Option<String> {
    let info = c.run(async |c| {
        let q = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
        c.query("get", Some(room), q).await
    });
    match info.attr("type") {
        Some("result") => None,
        _ => Some(outpost_testkit::stanza_error(&info).1),
    }
}

/// The node running a room is killed with SIGKILL: until its lease runs out, the room
/// answers the other node's users with a temporary error (no node makes a new, empty room
/// in its place), then the other node takes it over from the store, history included.
#[test]
fn a_room_whose_node_is_killed_moves_once_its_lease_ends() {
    let room = format!("war@conference.{DOMAIN}");
    let (_nats, _dir, n1, mut n2) = two_nodes();
    register(n1.c2s, DOMAIN, "alice");
    register(n1.c2s, DOMAIN, "bob");
    // Alice makes the room at n2, persistent; Bob, at n1, joins; Alice speaks.
    let mut alice = login(n2.c2s, DOMAIN, "alice");
    join_room(&mut alice, &room, "alice");
    let form = "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'>\
                <value>1</value></field></x>";
    let owner = format!("<query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query>");
    let set = alice.run(async |c| c.query("set", Some(&room), &owner).await);
    assert_eq!(set.attr("type"), Some("result"), "{set:?}");
    let mut bob = login(n1.c2s, DOMAIN, "bob");
    join_room(&mut bob, &room, "bob");
    alice.send(&format!(
        "<message to='{room}' type='groupchat'><body>before</body></message>"
    ));
    // Her stream's next answer comes once the room's archive row is committed.
    assert!(!any_error(&alice.barrier()));
    bob.recv_until(|el| body(el).as_deref() == Some("before"));

    n2.kill();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut waited = 0;
    while let Some(kind) = room_error_type(&mut bob, &room) {
        assert_eq!(kind, "wait", "the room must wait for its lease, not vanish");
        assert!(Instant::now() < deadline, "the room was not taken over");
        waited += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        waited > 0,
        "the dead node's lease cannot have ended at once"
    );
    let got = join_room(&mut bob, &room, "bob");
    let history: Vec<String> = got.iter().filter_map(body).collect();
    assert_eq!(history, ["before"], "{got:?}");
    bob.send(&format!(
        "<message to='{room}' type='groupchat'><body>after</body></message>"
    ));
    bob.recv_until(|el| body(el).as_deref() == Some("after"));
    drop(n1);
}

/// A hub of two `outpost serve` nodes stands in for a site that died: alice logs in at one
/// node and bob at the other, and they chat across the nodes; the node alice is on is
/// killed with SIGKILL, she logs in again at the other, which still stands in for her site,
/// and they go on.
#[test]
fn a_hub_node_killed_while_standing_in_leaves_the_site_to_the_other() {
    let nats = NatsServer::start();
    let pg = outpost_testkit::postgres::shared();
    let url = pg.url(&pg.create_database());
    let dir = tempfile::tempdir().expect("tempdir");
    let site_s2s = free_port();
    let federation = format!(
        "[federation]\nenabled = true\nrequire_tls = true\nsrv_lookup = false\n\
         dns_server = \"{}\"\nretry_initial_secs = 1\nretry_max_secs = 1\n\
         probe_interval_secs = 1\ndialback_secret = \"one-secret-for-all-nodes\"\n\
         relay_for = [\"site.test\"]\n[federation.peers]\n\"site.test\" = \"{site_s2s}\"\n",
        outpost_testkit::dns::nxdomain_server(),
    );
    let hub = "domains = [\"hub.test\"]\nrole = \"hub\"";
    let mut h1 = node_of(dir.path(), "h1", &url, nats.url(), hub, &federation);
    let h2 = node_of(dir.path(), "h2", &url, nats.url(), hub, &federation);
    let mut site = Server::start_configured(
        dir.path(),
        "site.test",
        site_s2s,
        &[("hub.test", h1.s2s)],
        "info",
        "",
        "hub = \"hub.test\"",
    );
    register(site.c2s, "site.test", "alice");
    register(site.c2s, "site.test", "bob");
    // Both nodes share the replica; h1 says when it holds the site's whole log.
    wait_for(dir.path(), "h1", "the site replicated", |v| {
        let s = &v["sites"][0];
        s["records"].as_i64() >= Some(2) && s["position"] == s["head"]
    });
    site.kill();

    let mut alice = login(h1.c2s, "site.test", "alice");
    let mut bob = login(h2.c2s, "site.test", "bob");
    alice.send("<presence/>");
    bob.send("<presence/>");
    // alice sees bob available: h1's directory holds his session on h2.
    subscribe(&mut alice, "alice@site.test", &mut bob, "bob@site.test");
    alice.recv_until(|el| is_presence(el, "bob@site.test/r", None));
    alice.send("<message to='bob@site.test' type='chat' id='a1'><body>at the hub</body></message>");
    bob.recv_until(|el| body(el).as_deref() == Some("at the hub"));

    h1.kill();
    let mut alice = login(h2.c2s, "site.test", "alice");
    alice.send("<presence/>");
    alice.send("<message to='bob@site.test/r' type='chat' id='a2'><body>h1 died</body></message>");
    bob.recv_until(|el| body(el).as_deref() == Some("h1 died"));
    bob.send(
        "<message to='alice@site.test/r' type='chat' id='b1'><body>still here</body></message>",
    );
    alice.recv_until(|el| body(el).as_deref() == Some("still here"));
    drop(h2);
}
