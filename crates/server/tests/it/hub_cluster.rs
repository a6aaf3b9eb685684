//! A hub, or a site, as a cluster of nodes on one PostgreSQL and NATS: the hub's nodes
//! stand in for a site together, and a site's nodes replicate from the node that runs its
//! link to the hub. Servers in one process on loopback, as in `cluster.rs` and `replication.rs`.

use outpost_server::config::{Config, Role};
use outpost_testkit::nats::NatsServer;
use outpost_testkit::*;

use crate::cluster::{cluster_config, database, link_node, store};
use crate::replication::{
    HUB, alice_edits_everything, befriend, federated, handle, hub_has_the_sites, login_at, s2s,
};

/// A node of a cluster on `url` and `nats`, as `tweak` makes it. Each test gives its
/// servers a loopback DNS server that answers at once: a link tried before the test has
/// given its peer an address fails fast and is tried again within a second.
async fn node(
    url: &str,
    nats: &str,
    id: &'static str,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let (url_c, nats) = (url.to_owned(), nats.to_owned());
    let tweak = move |c: &mut Config| {
        tweak(c);
        cluster_config(c, &url_c, &nats, id);
        c.federation.dialback_secret = Some("cluster-dialback-secret-for-tests".to_owned());
    };
    TestServer::start_with_store(store(url).await, tweak, None).await
}

/// Polls until `server` stands in for exactly `sites`.
async fn standby_is(server: &TestServer, sites: &[&str]) {
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let now = handle(server).standby();
        match now == sites {
            true => Ok(()),
            false => Err(format!("standing in for {now:?}, not {sites:?}")),
        }
    })
    .await;
}

/// Two hub nodes on one database and NATS, and site a (SQLite) with alice, bob and dave,
/// replicated there; the site reaches the hub at the node that does not run the link to it
/// (`other`, an index into the nodes), once it has replicated.
struct HubOfTwo {
    nats: NatsServer,
    _dns: dns::DnsServer,
    h: [TestServer; 2],
    a: TestServer,
    other: usize,
}

impl HubOfTwo {
    async fn start() -> HubOfTwo {
        let nats = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .expect("nats");
        let url = database().await;
        let dns = dns::DnsServer::start().await;
        let hub_node = |c: &mut Config| {
            federated(c, HUB);
            c.federation.dns_server = Some(dns.addr);
            c.role = Role::Hub;
            c.federation.relay_for = vec!["a.test".to_owned()];
        };
        let h1 = node(&url, nats.url(), "h1", hub_node).await;
        let h2 = node(&url, nats.url(), "h2", hub_node).await;
        let a = TestServer::start_with(|c| {
            federated(c, "a.test");
            c.federation.dns_server = Some(dns.addr);
            c.federation.hub = Some(HUB.to_owned());
        })
        .await;
        let mut hub = HubOfTwo {
            nats,
            _dns: dns,
            h: [h1, h2],
            a,
            other: 0,
        };
        hub.point();
        for (user, password) in [
            ("alice", "wonderland"),
            ("bob", "builder"),
            ("dave", "diver"),
        ] {
            hub.a.add_user(user, password).await;
        }
        befriend(&hub.a, "alice@a.test", "bob@a.test").await;
        befriend(&hub.a, "bob@a.test", "alice@a.test").await;
        for user in ["alice@a.test", "bob@a.test"] {
            hub_has_the_sites(&hub.a, &hub.h[0], user).await;
        }
        // The node the site reached took the hub's link to it; from now on the site
        // reaches the other one.
        let pg = hub.h[0].store.as_ref();
        hub.other = match link_node(pg, (HUB, "a.test"), "").await.as_str() {
            "h1" => 1,
            _ => 0,
        };
        hub.point();
        hub
    }

    /// The site reaches the hub at `other`; the hub's link reaches the site from the node
    /// that runs it.
    fn point(&self) {
        handle(&self.a).set_peer_address(HUB, s2s(&self.h[self.other]));
        for h in &self.h {
            handle(h).set_peer_address("a.test", s2s(&self.a));
        }
    }

    async fn stop(mut self) {
        for s in self.h.iter_mut().chain([&mut self.a]) {
            s.stop().await;
        }
        drop(self.nats);
    }
}

/// A hub of two nodes: while site a is down, alice logs in at one node and bob at the
/// other; the second node stands in for the site because the first said so, and they chat
/// across the nodes. When the site is back and has replicated, both nodes end the standby
/// and send their sessions home, what alice wrote at the hub is merged back into the
/// site, and what the hub kept for dave, away, is handed back, though the site answers
/// at the node that did not ask.
#[tokio::test]
async fn a_hub_of_two_nodes_stands_in_for_a_site_as_one() {
    let mut hub = HubOfTwo::start().await;
    let [h1, h2] = &hub.h;
    hub.a.stop().await;
    let mut alice = login_at(h1, ("alice", "a.test"), "wonderland").await;
    // h2 stands in for the site as soon as h1 does, before anyone logs in there.
    standby_is(h2, &["a.test"]).await;
    let mut bob = login_at(h2, ("bob", "a.test"), "builder").await;
    alice.roster_get().await;
    bob.roster_get().await;
    alice.available().await;
    bob.available().await;
    alice
        .send(&chat("bob@a.test", "across the hub's nodes"))
        .await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/hub"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("across the hub's nodes"));
    alice_edits_everything(&mut alice, "erin@c.test").await;
    // dave is away: the hub keeps what alice writes him, to hand it back to the site.
    alice.send(&chat("dave@a.test", "kept at the hub")).await;
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match h1.store.count_offline("dave@a.test").await {
            Ok(1) => Ok(()),
            n => Err(format!("{n:?} messages for dave at the hub")),
        }
    })
    .await;

    hub.a.restart().await;
    hub.point();
    let (a, [h1, h2]) = (&hub.a, &hub.h);
    // Both nodes end the standby and send their sessions home.
    assert!(alice.saw_see_other_host("a.test").await);
    assert!(bob.saw_see_other_host("a.test").await);
    standby_is(h1, &[]).await;
    standby_is(h2, &[]).await;
    // What alice wrote at the hub is at home.
    hub_has_the_sites(a, h1, "alice@a.test").await;
    let vcard = a.store.vcard("alice@a.test").await.unwrap();
    assert!(vcard.is_some_and(|v| v.contains("Alice Liddell")));
    // dave's message went home: handed back by the node that runs the link to the site, whose
    // request the site answered at the other node.
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let pending = h1.store.repl_origin("a.test").await.map(|o| o.pending);
        let home = a.store.offline("dave@a.test", 10).await.map(|m| m.len());
        match (pending, home) {
            (Ok(0), Ok(1)) => Ok(()),
            seen => Err(format!("pending at the hub, waiting at home: {seen:?}")),
        }
    })
    .await;
    hub.stop().await;
}

/// A site of two nodes replicates to its hub from the node that runs its link there, whichever
/// node its users change their directory at; the other node says where replication runs.
/// The hub reaches the site at the node that does not ship, so the hub's answers to the
/// shipper come in there and are passed on.
#[tokio::test]
async fn a_site_of_two_nodes_replicates_from_the_node_that_runs_its_link_to_the_hub() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats");
    let url = database().await;
    let dns = dns::DnsServer::start().await;
    let hub = TestServer::start_with(|c| {
        federated(c, HUB);
        c.federation.dns_server = Some(dns.addr);
        c.role = Role::Hub;
        c.federation.relay_for = vec!["a.test".to_owned()];
    })
    .await;
    let site_node = |c: &mut Config| {
        federated(c, "a.test");
        c.federation.dns_server = Some(dns.addr);
        c.federation.hub = Some(HUB.to_owned());
    };
    let mut s1 = node(&url, nats.url(), "s1", site_node).await;
    let mut s2 = node(&url, nats.url(), "s2", site_node).await;
    let (ships, other) = match link_node(s1.store.as_ref(), ("a.test", HUB), "")
        .await
        .as_str()
    {
        "s1" => (&s1, &s2),
        _ => (&s2, &s1),
    };
    for s in [&s1, &s2] {
        handle(s).set_peer_address(HUB, s2s(&hub));
    }
    handle(&hub).set_peer_address("a.test", s2s(other));
    other.add_user("alice", "wonderland").await;
    let mut alice = other.login("alice", "wonderland", "phone").await;
    alice_edits_everything(&mut alice, "carol@c.test").await;
    hub_has_the_sites(other, &hub, "alice@a.test").await;

    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let shipping = handle(ships).replication().expect("replicates");
        match shipping.error.is_none() && shipping.acked > 0 {
            true => Ok(()),
            false => Err(format!("{shipping:?}")),
        }
    })
    .await;
    let idle = handle(other).replication().expect("replicates");
    assert!(
        idle.error
            .as_deref()
            .is_some_and(|e| e.contains("node that runs the link to the hub")),
        "{idle:?}"
    );
    drop(alice);
    for s in [&mut s1, &mut s2] {
        s.stop().await;
    }
    drop(nats);
}
