//! A site replicates its directory to its hub over the server-to-server link: what its
//! users change arrives at the hub, a hub that lost its replica gets a snapshot, and a hub
//! takes replication only from its own sites. Servers in one process on loopback.

use base64::Engine as _;
use outpost_server::config::{Config, HostPort, Role};
use outpost_store::Store;
use outpost_testkit::*;

pub(crate) const HUB: &str = "h.test";
const OMEMO_DEVICES: &str = "urn:xmpp:omemo:2:devices";

pub(crate) fn federated(c: &mut Config, domain: &str) {
    c.domains = vec![domain.to_owned()];
    c.listen.s2s = vec!["127.0.0.1:0".parse().expect("addr")];
    c.federation.enabled = true;
    // Every peer has an address: no DNS is asked.
    c.federation.srv_lookup = false;
    c.federation.dns_server = Some("127.0.0.1:9".parse().expect("addr"));
    c.federation.retry_initial_secs = 1;
    c.federation.retry_max_secs = 2;
}

/// Where a server of a test keeps its store.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    match backend {
        Backend::Sqlite => TestServer::start_with(tweak).await,
        Backend::Postgres => TestServer::start_on_postgres(tweak).await,
    }
}

async fn hub(relay_for: &[&str]) -> TestServer {
    hub_on(Backend::Sqlite, relay_for).await
}

async fn hub_on(backend: Backend, relay_for: &[&str]) -> TestServer {
    let relay_for: Vec<String> = relay_for.iter().map(|d| (*d).to_owned()).collect();
    start(backend, move |c| {
        federated(c, HUB);
        c.role = Role::Hub;
        c.federation.relay_for = relay_for;
    })
    .await
}

async fn site(domain: &'static str, hub: &TestServer) -> TestServer {
    site_on(Backend::Sqlite, domain, hub).await
}

async fn site_on(backend: Backend, domain: &'static str, hub: &TestServer) -> TestServer {
    let site = start(backend, move |c| {
        federated(c, domain);
        c.federation.hub = Some(HUB.to_owned());
    })
    .await;
    point(&site, hub);
    site
}

pub(crate) fn handle(server: &TestServer) -> &outpost_server::ServerHandle {
    server.handle.as_ref().expect("running")
}

pub(crate) fn s2s(server: &TestServer) -> HostPort {
    server.s2s.expect("s2s listener").into()
}

/// Makes `site` and `hub` reach each other.
fn point(site: &TestServer, hub: &TestServer) {
    handle(site).set_peer_address(HUB, s2s(hub));
    handle(hub).set_peer_address(site.domain(), s2s(site));
}

/// What a user's directory holds, as the store answers for it.
pub(crate) async fn directory(store: &dyn Store, user: &str) -> String {
    format!(
        "credentials {:?}\nroster {:?}\nvcard {:?}\nblocked {:?}\nnodes {:?}\nitems {:?}",
        store.credentials(user).await.expect("credentials"),
        store.roster(user).await.expect("roster").items,
        store.vcard(user).await.expect("vcard"),
        store.blocklist(user).await.expect("blocklist"),
        store.pep_nodes(user).await.expect("nodes"),
        store
            .pep_items(user, OMEMO_DEVICES, None)
            .await
            .expect("items"),
    )
}

/// Waits until the hub's copy of `user`'s directory is the site's.
pub(crate) async fn hub_has_the_sites(site: &TestServer, hub: &TestServer, user: &str) {
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let want = directory(site.store.as_ref(), user).await;
        let got = directory(hub.store.as_ref(), user).await;
        if want == got {
            Ok(())
        } else {
            Err(format!("the hub has\n{got}\nthe site\n{want}"))
        }
    })
    .await;
}

/// alice changes each part of her directory through her client.
pub(crate) async fn alice_edits_everything(alice: &mut Client, contact: &str) {
    let answers = [
        alice
            .query(
                "set",
                None,
                &format!(
                    "<query xmlns='jabber:iq:roster'><item jid='{contact}' name='Carol'>\
                     <group>Friends</group></item></query>"
                ),
            )
            .await,
        alice
            .query(
                "set",
                None,
                "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN></vCard>",
            )
            .await,
        alice
            .query(
                "set",
                None,
                "<block xmlns='urn:xmpp:blocking'><item jid='spam@example.org'/></block>",
            )
            .await,
        alice
            .query(
                "set",
                None,
                &format!(
                    "<pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                     <publish node='{OMEMO_DEVICES}'><item id='current'>\
                     <devices xmlns='urn:xmpp:omemo:2'><device id='4711'/></devices>\
                     </item></publish></pubsub>"
                ),
            )
            .await,
    ];
    for answer in answers {
        assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    }
}

#[tokio::test]
async fn what_a_user_changes_at_the_site_reaches_the_hub() {
    changes_at_the_site_reach_the_hub(Backend::Sqlite).await;
}

/// The same with the site and the hub on PostgreSQL.
#[tokio::test]
async fn what_a_user_changes_at_a_site_on_postgresql_reaches_its_hub_on_postgresql() {
    changes_at_the_site_reach_the_hub(Backend::Postgres).await;
}

async fn changes_at_the_site_reach_the_hub(backend: Backend) {
    let hub = hub_on(backend, &["a.test"]).await;
    let a = site_on(backend, "a.test", &hub).await;
    a.add_user("alice", "wonderland").await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice_edits_everything(&mut alice, "carol@c.test").await;
    let site_view = directory(a.store.as_ref(), "alice@a.test").await;
    assert!(
        site_view.contains("Alice Liddell") && site_view.contains("4711"),
        "{site_view}"
    );
    hub_has_the_sites(&a, &hub, "alice@a.test").await;

    // Removals travel too.
    let answer = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='carol@c.test' subscription='remove'/></query>",
        )
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    hub_has_the_sites(&a, &hub, "alice@a.test").await;
    assert!(
        hub.store
            .roster("alice@a.test")
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A new password replaces the verifiers at the hub; the password itself never leaves.
    let answer = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><username>alice</username>\
             <password>looking-glass</password></query>",
        )
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    hub_has_the_sites(&a, &hub, "alice@a.test").await;

    // So does a removed account, with all it owned.
    let mut again = a.login("alice", "looking-glass", "laptop").await;
    let answer = again
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><remove/></query>",
        )
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match hub
            .store
            .account_exists("alice@a.test")
            .await
            .expect("store")
        {
            false => Ok(()),
            true => Err("alice is still at the hub".to_owned()),
        }
    })
    .await;
    assert!(
        hub.store
            .pep_nodes("alice@a.test")
            .await
            .unwrap()
            .is_empty()
    );

    // The site's log keeps nothing the hub acknowledged.
    let status = handle(&a)
        .replication()
        .expect("a site with a hub replicates");
    assert_eq!(status.error, None);
    let log = a.store.repl_log().await.unwrap();
    assert!(log.acked > 0 && log.first > log.acked, "{log:?}");
}

#[tokio::test]
async fn a_hub_that_lost_its_replica_gets_all_of_it_again() {
    let mut first = hub(&["a.test"]).await;
    let a = site("a.test", &first).await;
    a.add_user("alice", "wonderland").await;
    let mut alice = a.login("alice", "wonderland", "phone").await;
    alice_edits_everything(&mut alice, "carol@c.test").await;
    hub_has_the_sites(&a, &first, "alice@a.test").await;
    first.stop().await;

    // A new hub with an empty store takes over the hub's domain; the site's log no longer
    // holds what the first hub acknowledged, so only a snapshot can bring it all.
    let second = hub(&["a.test"]).await;
    point(&a, &second);
    a.add_user("bob", "builder").await;
    hub_has_the_sites(&a, &second, "alice@a.test").await;
    hub_has_the_sites(&a, &second, "bob@a.test").await;
    let origin = second.store.repl_origin("a.test").await.unwrap();
    assert_eq!(origin.snapshots, 1, "{origin:?}");
    // The site counts the snapshot once the hub's answer is back.
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let status = handle(&a).replication().expect("replicates");
        match status.snapshots {
            2 => Ok(()),
            _ => Err(format!("{status:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_hub_takes_replication_only_from_its_own_sites() {
    // The hub relays for c.test only: b.test may talk to it but not replicate to it.
    let hub = hub(&["c.test"]).await;
    let b = site("b.test", &hub).await;
    b.add_user("mallory", "secret").await;
    let status = poll_until(tokio::time::Instant::now() + WAIT, || async {
        let status = handle(&b).replication().expect("replicates");
        match &status.error {
            Some(e) if e.contains("not a site of this hub") => Ok(status),
            _ => Err(format!("{status:?}")),
        }
    })
    .await;
    assert_eq!(status.acked, 0);
    assert!(!hub.store.account_exists("mallory@b.test").await.unwrap());
    assert!(hub.store.repl_origins().await.unwrap().is_empty());
}

/// The paper's Figure 2 in one process: sites a.test (alice, bob) and c.test (carol), and
/// the hub that relays between them and keeps a replica of both.
async fn figure_two() -> (TestServer, TestServer, TestServer) {
    figure_two_on(Backend::Sqlite).await
}

/// Figure 2 with the hub and site a on `backend` (site c on SQLite).
async fn figure_two_on(backend: Backend) -> (TestServer, TestServer, TestServer) {
    let hub = hub_on(backend, &["a.test", "c.test"]).await;
    let a = site_on(backend, "a.test", &hub).await;
    let c = site("c.test", &hub).await;
    meet(&a, &c);
    a.add_user("alice", "wonderland").await;
    a.add_user("bob", "builder").await;
    c.add_user("carol", "christmas").await;
    befriend(&a, "alice@a.test", "carol@c.test").await;
    befriend(&c, "carol@c.test", "alice@a.test").await;
    befriend(&a, "alice@a.test", "bob@a.test").await;
    befriend(&a, "bob@a.test", "alice@a.test").await;
    hub_has_the_sites(&a, &hub, "alice@a.test").await;
    hub_has_the_sites(&a, &hub, "bob@a.test").await;
    (hub, a, c)
}

/// Makes two sites reach each other directly.
fn meet(a: &TestServer, c: &TestServer) {
    handle(a).set_peer_address(c.domain(), s2s(c));
    handle(c).set_peer_address(a.domain(), s2s(a));
}

pub(crate) async fn befriend(site: &TestServer, user: &str, contact: &str) {
    let mut item = outpost_store::RosterItem::new(contact);
    item.subscription = outpost_store::Subscription::Both;
    site.store
        .put_roster_item(user, &item)
        .await
        .expect("roster");
}

/// A client of `server` for an account of `domain` (the hub's certificate is the one the
/// test trusts for it), past STARTTLS.
async fn connect_for(server: &TestServer, domain: &str) -> Client {
    let mut c = Client::connect_open(server.starttls, domain).await;
    c.starttls(&server.tls_connector()).await;
    c
}

/// Logs in at `server` (a hub) for an account of `jid.1`, going again while it sends the
/// client home, as a client that finds its home dead does: a hub takes a site that answered
/// within the last second for up.
pub(crate) async fn login_at(server: &TestServer, jid: (&str, &str), password: &str) -> Client {
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let mut c = connect_for(server, jid.1).await;
        match c.auth_plain(jid.0, password).await {
            Ok(()) => {
                c.bind("hub").await;
                Ok(c)
            }
            Err(e) => Err(format!("login at the hub: {e}")),
        }
    })
    .await
}

/// Logging in at `server` as `user@domain` ends with `<see-other-host/>` naming `home`.
async fn sent_home(server: &TestServer, user: &str, domain: &str, password: &str, home: &str) {
    let mut c = connect_for(server, domain).await;
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
    .await;
    let answer = c.recv().await;
    assert!(
        is_see_other_host(&answer, home),
        "not sent home to {home}: {answer:?}"
    );
    assert_eq!(c.expect_close().await, None);
}

#[tokio::test]
async fn while_the_site_is_down_its_users_live_at_the_hub_and_go_home_when_it_is_back() {
    let (hub, mut a, c) = figure_two().await;

    // The site is up: its users log in there, not at the hub.
    sent_home(&hub, "alice", "a.test", "wonderland", "a.test").await;
    assert!(handle(&hub).standby().is_empty());

    let stanza_id = alice_writes_to_bob_before_the_outage(&a, &hub).await;
    a.stop().await;
    // The same passwords work at the hub, and alice finds her roster there.
    let mut alice = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    assert_eq!(handle(&hub).standby(), ["a.test"]);
    let roster = alice.roster_get().await;
    let roster = String::from(&roster);
    assert!(
        roster.contains("carol@c.test") && roster.contains("bob@a.test"),
        "{roster}"
    );
    // Her history is there too, under the same stanza-id, so her client catches up by id.
    let (history, _) = alice.mam(None, "").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].0, stanza_id);
    assert_eq!(body(&history[0].1).as_deref(), Some("before the outage"));
    let mut bob = login_at(&hub, ("bob", "a.test"), "builder").await;
    alice.available().await;
    bob.available().await;
    // What waited for bob at his site waits for him at the hub too.
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/phone"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("before the outage"));

    // alice and bob chat at the hub.
    alice.send(&chat("bob@a.test", "the site is down")).await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "alice@a.test/hub"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("the site is down"));

    // carol, at the other site, reaches alice at the hub, and alice answers her.
    let mut carol = c.login("carol", "christmas", "pc").await;
    carol.available().await;
    carol.send(&chat("alice@a.test", "are you there?")).await;
    let got = alice
        .recv_where(|el| is_chat_from(el, "carol@c.test/pc"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("are you there?"));
    alice.send(&chat("carol@c.test/pc", "at the hub")).await;
    let got = carol
        .recv_where(|el| is_chat_from(el, "alice@a.test/hub"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("at the hub"));

    // bob leaves the hub; what carol sends him now waits there, in his offline queue.
    bob.close().await;
    carol.send(&chat("bob@a.test", "while you were away")).await;
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match hub.store.count_offline("bob@a.test").await.expect("count") {
            1 => Ok(()),
            n => Err(format!("{n} messages for bob at the hub")),
        }
    })
    .await;

    // While it was down, its operator made an account (straight into its store): the site
    // comes back with more than the hub has, so the hub answers its replication while it
    // still stands in for it, and sends the sessions home once it has caught up.
    add_user_to_the_stopped_site(&a, "dave@a.test").await;
    a.restart().await;
    point(&a, &hub);
    meet(&a, &c);
    assert!(alice.saw_see_other_host("a.test").await);
    assert!(handle(&hub).standby().is_empty());
    assert!(hub.store.account_exists("dave@a.test").await.unwrap());
    sent_home(&hub, "alice", "a.test", "wonderland", "a.test").await;

    bob_finds_carols_message_at_home(&a, &hub).await;
}

/// alice, at home, writes to bob (away); returns the message's stanza-id once the hub has it
/// too, in her archive and in bob's offline queue.
async fn alice_writes_to_bob_before_the_outage(a: &TestServer, hub: &TestServer) -> String {
    // The archive goes to the hub with the rest.
    let mut at_home = a.login("alice", "wonderland", "phone").await;
    at_home.send(&chat("bob@a.test", "before the outage")).await;
    let (before, fin) = at_home.mam(None, "").await;
    assert!(
        fin.attr("type") == Some("result") && before.len() == 1,
        "{fin:?}"
    );
    let stanza_id = before[0].0.clone();
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let q = outpost_store::ArchiveQuery {
            owner: "alice@a.test",
            with: None,
            after: None,
            before: None,
            limit: 10,
            newest_first: false,
        };
        let archived = hub.store.archive_page(&q).await.expect("archive").len();
        let waiting = hub.store.count_offline("bob@a.test").await.expect("count");
        match (archived, waiting) {
            (1, 1) => Ok(()),
            seen => Err(format!(
                "alice's archive and bob's queue at the hub: {seen:?}"
            )),
        }
    })
    .await;
    at_home.close().await;
    stanza_id
}

/// An account made straight into the store of a site that is not running.
async fn add_user_to_the_stopped_site(a: &TestServer, jid: &str) {
    let offline = outpost_store::SqliteStore::open(&a.dir.path().join("outpost.db"))
        .await
        .expect("the site's store");
    outpost_server::accounts::add_user(&offline, jid, "a-password-of-its-own", 4096)
        .await
        .expect("add the account");
    outpost_store::Store::close(&offline).await;
}

/// The hub hands back what carol sent bob while he was away: he finds it at home, once,
/// and not alice's from before the outage, which he got at the hub.
async fn bob_finds_carols_message_at_home(a: &TestServer, hub: &TestServer) {
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let at_site = a.store.count_offline("bob@a.test").await.expect("count");
        let at_hub = hub.store.count_offline("bob@a.test").await.expect("count");
        match (at_site, at_hub) {
            (1, 0) => Ok(()),
            seen => Err(format!(
                "messages for bob at his site and at the hub: {seen:?}"
            )),
        }
    })
    .await;
    let mut bob = a.login("bob", "builder", "home").await;
    bob.available().await;
    let got = bob
        .recv_where(|el| is_chat_from(el, "carol@c.test/pc"))
        .await;
    assert_eq!(body(&got).as_deref(), Some("while you were away"));
    bob.assert_none_before_ping(|el| el.name() == "message", "a second copy")
        .await;
}

#[tokio::test]
async fn accounts_are_changed_at_home_only() {
    let (hub, mut a, _c) = figure_two().await;
    a.stop().await;
    let mut alice = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    let answer = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><username>alice</username>\
             <password>changed-at-the-hub</password></query>",
        )
        .await;
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");
    assert!(String::from(&answer).contains("not-allowed"), "{answer:?}");
    let answer = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><remove/></query>",
        )
        .await;
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");
    assert!(hub.store.account_exists("alice@a.test").await.unwrap());

    // Nor are accounts made for the site at the hub.
    let mut stranger = connect_for(&hub, "a.test").await;
    let answer = stranger
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><username>eve</username>\
             <password>password-of-eve</password></query>",
        )
        .await;
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");
    assert!(!hub.store.account_exists("eve@a.test").await.unwrap());
}

#[tokio::test]
async fn a_site_with_two_domains_replicates_the_first() {
    let hub = hub(&["a.test"]).await;
    let a = TestServer::start_with(|c| {
        federated(c, "a.test");
        c.domains.push("second.test".to_owned());
        c.federation.hub = Some(HUB.to_owned());
    })
    .await;
    point(&a, &hub);
    outpost_server::accounts::add_user(
        a.store.as_ref(),
        "zed@second.test",
        "password-of-zed",
        4096,
    )
    .await
    .expect("add zed");
    a.add_user("alice", "wonderland").await;
    hub_has_the_sites(&a, &hub, "alice@a.test").await;
    assert!(!hub.store.account_exists("zed@second.test").await.unwrap());
    let status = handle(&a).replication().expect("replicates");
    assert_eq!(status.error, None, "{status:?}");
}

#[tokio::test]
async fn a_site_the_hub_cannot_reach_stays_stood_in_for_while_it_replicates() {
    let (hub, a, _c) = figure_two().await;
    // The hub cannot open a connection to the site (a site behind a NAT or a firewall that
    // only lets it out): alice, away, logs in at the hub.
    let refused = closed_port().await;
    handle(&hub).set_peer_address("a.test", refused.into());
    let mut alice = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    assert_eq!(handle(&hub).standby(), ["a.test"]);

    // The site goes on replicating and catches up; the hub still cannot reach it, so alice
    // stays where she can be.
    a.add_user("erin", "password-of-erin").await;
    hub_has_the_sites(&a, &hub, "erin@a.test").await;
    let status = handle(&a).replication().expect("replicates");
    assert_eq!(status.error, None, "{status:?}");
    let pong = alice
        .query("get", Some("a.test"), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert!(pong.attr("type").is_some(), "{pong:?}");
    assert_eq!(handle(&hub).standby(), ["a.test"]);
}

#[tokio::test]
async fn at_the_hub_a_users_subscription_requests_reach_other_sites() {
    let (hub, mut a, c) = figure_two().await;
    a.stop().await;
    c.add_user("dave", "password-of-dave").await;
    let mut dave = c.login("dave", "password-of-dave", "pc").await;
    dave.roster_get().await;
    dave.available().await;
    let mut alice = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    alice.roster_get().await;
    alice
        .send("<presence to='dave@c.test' type='subscribe'/>")
        .await;
    let request = dave
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(request.attr("from"), Some("alice@a.test"));
}

/// alice's and bob's archives at `server`, as (id, body) pairs.
async fn archived(server: &TestServer, user: &str) -> Vec<(i64, Option<String>)> {
    let q = outpost_store::ArchiveQuery {
        owner: user,
        with: None,
        after: None,
        before: None,
        limit: 100,
        newest_first: false,
    };
    let page = server.store.archive_page(&q).await.expect("archive");
    page.iter()
        .map(|m| {
            let el: outpost_proto::minidom::Element = m.stanza.parse().expect("stanza");
            (m.id, body(&el))
        })
        .collect()
}

/// Scenario (b) of the paper's Figure 2: while the site is down, alice lives at the hub
/// and changes her directory there; carol writes to her and to bob (away). When the site is
/// back, everything written at the hub goes home: alice finds her changes and her history
/// at the site under the ids she saw at the hub, and bob carol's message, once.
#[tokio::test]
async fn what_users_write_at_the_hub_goes_home_with_them() {
    users_write_at_the_hub(Backend::Sqlite).await;
}

/// The same with the hub and the site on PostgreSQL: standby, hand-back and merge.
#[tokio::test]
async fn what_users_write_at_a_hub_on_postgresql_goes_home_with_them() {
    users_write_at_the_hub(Backend::Postgres).await;
}

async fn users_write_at_the_hub(backend: Backend) {
    let (hub, mut a, c) = figure_two_on(backend).await;
    a.stop().await;
    let mut alice = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    alice.roster_get().await;
    alice.available().await;
    alice_edits_everything(&mut alice, "erin@c.test").await;
    let mut carol = c.login("carol", "christmas", "pc").await;
    carol.available().await;
    carol
        .send(&chat("alice@a.test", "written to the hub"))
        .await;
    alice
        .recv_where(|el| is_chat_from(el, "carol@c.test/pc"))
        .await;
    carol.send(&chat("bob@a.test", "for bob, away")).await;
    let (at_hub, _) = alice.mam(None, "").await;
    assert_eq!(at_hub.len(), 1);
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match hub.store.count_offline("bob@a.test").await.expect("count") {
            1 => Ok(()),
            n => Err(format!("{n} messages for bob at the hub")),
        }
    })
    .await;

    a.restart().await;
    point(&a, &hub);
    meet(&a, &c);
    assert!(alice.saw_see_other_host("a.test").await);
    // The site holds what alice wrote at the hub.
    hub_has_the_sites(&a, &hub, "alice@a.test").await;
    let vcard = a.store.vcard("alice@a.test").await.unwrap();
    assert!(vcard.is_some_and(|v| v.contains("Alice Liddell")));

    // Her history at home has carol's message under the stanza-id the hub gave it.
    let mut alice = a.login("alice", "wonderland", "home").await;
    let (at_home, _) = alice.mam(None, "").await;
    let ids: Vec<&String> = at_home.iter().map(|(id, _)| id).collect();
    assert!(ids.contains(&&at_hub[0].0), "{ids:?} lacks {}", at_hub[0].0);

    // bob's message came back both ways (handed back, and in the archive merged back):
    // one copy at home, and the hub holds nothing more for the site.
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let bobs = archived(&a, "bob@a.test").await;
        let carols: Vec<_> = bobs
            .iter()
            .filter(|(_, b)| b.as_deref() == Some("for bob, away"))
            .collect();
        let pending = hub.store.repl_origin("a.test").await.map(|o| o.pending);
        match (carols.len(), pending) {
            (1, Ok(0)) => Ok(()),
            seen => Err(format!("bob's archive at home: {bobs:?}; {seen:?}")),
        }
    })
    .await;
}

/// A partition where both sides live: the hub cannot reach the site (it stands in for it
/// for alice, away), while alice's other client at home goes on. Both write her vCard; the
/// later write wins on both sides, and once the hub reaches the site again nothing is
/// left to merge.
#[tokio::test]
async fn when_both_sides_write_a_key_the_later_write_wins_on_both() {
    let (hub, a, _c) = figure_two().await;
    let refused = closed_port().await;
    handle(&hub).set_peer_address("a.test", refused.into());
    let mut away = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    let mut home = a.login("alice", "wonderland", "home").await;
    let vcard = |name: &str| format!("<vCard xmlns='vcard-temp'><FN>{name}</FN></vCard>");
    for (client, name) in [(&mut away, "written away"), (&mut home, "written at home")] {
        let answer = client.query("set", None, &vcard(name)).await;
        assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    }
    // The site's later write reached the hub and won there.
    hub_has_the_sites(&a, &hub, "alice@a.test").await;
    let at_hub = hub.store.vcard("alice@a.test").await.unwrap();
    assert!(at_hub.is_some_and(|v| v.contains("written at home")));
    assert_eq!(hub.store.repl_origin("a.test").await.unwrap().conflicts, 1);

    // The hub reaches the site again: the standby ends with the next replication, and
    // what the hub wrote, having lost, is not merged back over the site's.
    point(&a, &hub);
    a.add_user("erin", "password-of-erin").await;
    assert!(away.saw_see_other_host("a.test").await);
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match hub.store.repl_origin("a.test").await.map(|o| o.pending) {
            Ok(0) => Ok(()),
            seen => Err(format!("left to merge: {seen:?}")),
        }
    })
    .await;
    let at_site = a.store.vcard("alice@a.test").await.unwrap();
    assert!(at_site.is_some_and(|v| v.contains("written at home")));
    hub_has_the_sites(&a, &hub, "alice@a.test").await;
}

/// A password changed at the site while alice is stood in for at the hub: her session there
/// ends as it would at home, the old password stops working there, the new one works.
#[tokio::test]
async fn a_password_changed_at_home_ends_the_sessions_at_the_hub() {
    let (hub, a, _c) = figure_two().await;
    let refused = closed_port().await;
    handle(&hub).set_peer_address("a.test", refused.into());
    let mut away = login_at(&hub, ("alice", "a.test"), "wonderland").await;
    outpost_server::accounts::set_password(a.store.as_ref(), "alice@a.test", "looking-glass", 4096)
        .await
        .expect("password");
    assert_eq!(away.expect_close().await.as_deref(), Some("not-authorized"));
    let mut old = connect_for(&hub, "a.test").await;
    assert!(old.auth_plain("alice", "wonderland").await.is_err());
    login_at(&hub, ("alice", "a.test"), "looking-glass").await;
}
