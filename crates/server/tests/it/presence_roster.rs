//! Rosters (RFC 6121 §2), subscriptions (§3) and presence (§4) over real sockets.

use outpost_proto::minidom::Element;
use outpost_testkit::*;

const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost";
const ALICE_PHONE: &str = "alice@localhost/phone";
const BOB_PC: &str = "bob@localhost/pc";

/// Alice (phone) and Bob (pc), both online, available and interested in roster pushes.
async fn alice_and_bob(server: &TestServer) -> (Client, Client) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    alice.roster_get().await;
    bob.roster_get().await;
    alice.available().await;
    bob.available().await;
    (alice, bob)
}

fn is_presence(el: &Element, from: &str, ty: Option<&str>) -> bool {
    el.name() == "presence" && el.attr("from") == Some(from) && el.attr("type") == ty
}

async fn expect_presence(c: &mut Client, from: &str, ty: Option<&str>) -> Element {
    c.recv_where(|el| is_presence(el, from, ty)).await
}

/// Checks a roster item's subscription state and pending-out flag.
fn assert_item(item: &Element, subscription: &str, ask: bool) {
    assert_eq!(item.attr("subscription"), Some(subscription), "{item:?}");
    assert_eq!(
        item.attr("ask"),
        ask.then_some("subscribe"),
        "ask in {item:?}"
    );
}

/// The item for `contact` in a roster result, if any.
fn item_in<'a>(roster: &'a Element, contact: &str) -> Option<&'a Element> {
    roster_items(roster)
        .into_iter()
        .find(|i| i.attr("jid") == Some(contact))
}

/// A subscribes to B's presence and B approves; consumes the roster pushes this causes
/// (A: the pending request, then the approval; B: the approval) and waits until A sees
/// B's presence.
async fn subscribe(a: &mut Client, a_bare: &str, b: &mut Client, b_bare: &str) {
    let b_full = b.jid.clone();
    a.send(&format!("<presence to='{b_bare}' type='subscribe'/>"))
        .await;
    assert!(a.recv_roster_push(b_bare).await.attr("ask").is_some());
    expect_presence(b, a_bare, Some("subscribe")).await;
    b.send(&format!("<presence to='{a_bare}' type='subscribed'/>"))
        .await;
    b.recv_roster_push(a_bare).await;
    assert!(a.recv_roster_push(b_bare).await.attr("ask").is_none());
    expect_presence(a, &b_full, None).await;
}

/// Mutual subscription between Alice and Bob.
async fn befriend(alice: &mut Client, bob: &mut Client) {
    subscribe(alice, ALICE, bob, BOB).await;
    subscribe(bob, BOB, alice, ALICE).await;
}

// ---- rosters ----

#[tokio::test]
async fn empty_roster_has_a_version() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let features = alice.features.clone().expect("features");
    assert!(
        features.has_child("ver", "urn:xmpp:features:rosterver"),
        "XEP-0237 advertised"
    );
    let reply = alice.roster_get().await;
    let query = reply.get_child("query", NS_ROSTER).expect("query");
    assert!(query.attr("ver").is_some(), "{reply:?}");
    assert!(roster_items(&reply).is_empty());
}

#[tokio::test]
async fn roster_set_is_pushed_to_interested_resources() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut phone = server.login("alice", "wonderland", "phone").await;
    let mut laptop = server.login("alice", "wonderland", "laptop").await;
    let mut tablet = server.login("alice", "wonderland", "tablet").await;
    phone.roster_get().await;
    laptop.roster_get().await;

    let reply = phone
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'>\
             <group>Friends</group><group>Work</group></item></query>",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    for c in [&mut phone, &mut laptop] {
        let item = c.recv_roster_push("carol@localhost").await;
        assert_item(&item, "none", false);
        assert_eq!(item.attr("name"), Some("Carol"));
        let groups: Vec<String> = item.children().map(|g| g.text()).collect();
        assert_eq!(groups, ["Friends", "Work"]);
    }
    // RFC 6121 §2.1.6: only resources that asked for the roster get pushes.
    tablet
        .assert_none_before_ping(|el| el.name() == "iq", "roster push")
        .await;
    let roster = tablet.roster_get().await;
    assert_eq!(
        item_in(&roster, "carol@localhost").and_then(|i| i.attr("name")),
        Some("Carol")
    );
}

#[tokio::test]
async fn roster_set_with_two_items_is_a_bad_request() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let reply = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='a@localhost'/>\
             <item jid='b@localhost'/></query>",
        )
        .await;
    assert_eq!(stanza_error(&reply).0, "bad-request");
}

#[tokio::test]
async fn roster_versioning_answers_unchanged_rosters_empty() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let ver = |reply: &Element| {
        reply
            .get_child("query", NS_ROSTER)
            .and_then(|q| q.attr("ver"))
            .map(str::to_owned)
    };
    let get_with = |v: &str| format!("<query xmlns='jabber:iq:roster' ver='{v}'/>");

    let v0 = ver(&alice.roster_get().await).expect("ver");
    // XEP-0237 §2.3 / RFC 6121 §2.6.3: same version, empty result.
    let reply = alice.query("get", None, &get_with(&v0)).await;
    assert_eq!(reply.attr("type"), Some("result"));
    assert!(reply.children().next().is_none(), "{reply:?}");

    let set = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'><item jid='carol@localhost'/></query>",
        )
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    let pushed = alice.recv_roster_push("carol@localhost").await;
    assert_item(&pushed, "none", false);

    // An old version gets the whole roster with the new version.
    let reply = alice.query("get", None, &get_with(&v0)).await;
    let v1 = ver(&reply).expect("new ver");
    assert_ne!(v0, v1);
    assert!(item_in(&reply, "carol@localhost").is_some());
    let reply = alice.query("get", None, &get_with(&v1)).await;
    assert!(reply.children().next().is_none(), "{reply:?}");
}

// ---- subscriptions ----

#[tokio::test]
async fn full_subscription_handshake_both_ways() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;

    // RFC 6121 §3.1.2: Alice asks; her roster shows the pending request.
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    assert_item(&alice.recv_roster_push(BOB).await, "none", true);
    // §3.1.3: Bob gets the request from Alice's bare JID.
    expect_presence(&mut bob, ALICE, Some("subscribe")).await;

    // §3.1.5: Bob approves.
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    assert_item(&bob.recv_roster_push(ALICE).await, "from", false);
    assert_item(&alice.recv_roster_push(BOB).await, "to", false);
    expect_presence(&mut alice, BOB, Some("subscribed")).await;
    // §3.1.6: and Alice receives Bob's current presence.
    expect_presence(&mut alice, BOB_PC, None).await;
    // Bob is not subscribed to Alice yet: her presence does not go to him.
    alice
        .presence("<presence><status>one way</status></presence>")
        .await;
    bob.assert_none_before_ping(|el| is_presence(el, ALICE_PHONE, None), "Alice's presence")
        .await;

    // The reverse direction.
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    assert_item(&bob.recv_roster_push(ALICE).await, "from", true);
    expect_presence(&mut alice, BOB, Some("subscribe")).await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    assert_item(&alice.recv_roster_push(BOB).await, "both", false);
    assert_item(&bob.recv_roster_push(ALICE).await, "both", false);
    expect_presence(&mut bob, ALICE, Some("subscribed")).await;
    expect_presence(&mut bob, ALICE_PHONE, None).await;

    // Stored state agrees with the pushes.
    let roster = alice.roster_get().await;
    assert_item(item_in(&roster, BOB).expect("bob"), "both", false);
    let roster = bob.roster_get().await;
    assert_item(item_in(&roster, ALICE).expect("alice"), "both", false);

    // §4.4: presence broadcasts now flow both ways.
    alice
        .presence("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    let p = expect_presence(&mut bob, ALICE_PHONE, None).await;
    assert_eq!(
        p.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref(),
        Some("away")
    );
    bob.presence("<presence><status>building</status></presence>")
        .await;
    let p = expect_presence(&mut alice, BOB_PC, None).await;
    assert_eq!(
        p.get_child("status", NS_CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("building")
    );
}

#[tokio::test]
async fn contacts_see_unavailable_on_clean_and_abrupt_disconnect() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    befriend(&mut alice, &mut bob).await;

    // RFC 6121 §4.5.2: a clean close.
    bob.close().await;
    expect_presence(&mut alice, BOB_PC, Some("unavailable")).await;

    // RFC 6121 §4.5.3.2 (and §4.5.2 for the server): the socket just goes away.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    expect_presence(&mut alice, BOB_PC, None).await;
    drop(bob);
    expect_presence(&mut alice, BOB_PC, Some("unavailable")).await;
}

#[tokio::test]
async fn explicit_unavailable_and_back() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    befriend(&mut alice, &mut bob).await;

    // RFC 6121 §4.5.1: the client says it is going away without closing the stream.
    bob.presence("<presence type='unavailable'><status>brb</status></presence>")
        .await;
    let p = expect_presence(&mut alice, BOB_PC, Some("unavailable")).await;
    assert_eq!(
        p.get_child("status", NS_CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("brb")
    );
    bob.available().await;
    expect_presence(&mut alice, BOB_PC, None).await;
}

#[tokio::test]
async fn probes_on_login_bring_contacts_presence() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    befriend(&mut alice, &mut bob).await;
    alice.close().await;
    expect_presence(&mut bob, ALICE_PHONE, Some("unavailable")).await;

    // RFC 6121 §4.2.2: at login, the server probes the contacts Alice is subscribed to.
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice.send("<presence/>").await;
    expect_presence(&mut alice, BOB_PC, None).await;
    expect_presence(&mut bob, ALICE_PHONE, None).await;
}

#[tokio::test]
async fn probe_of_an_offline_contact_is_answered_unavailable() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    befriend(&mut alice, &mut bob).await;
    bob.close().await;
    expect_presence(&mut alice, BOB_PC, Some("unavailable")).await;
    alice.close().await;

    // RFC 6121 §4.3.2: Bob has no available resource, so the server answers Alice's
    // login probe for him with unavailable presence from his bare JID.
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice.send("<presence/>").await;
    expect_presence(&mut alice, BOB, Some("unavailable")).await;
}

#[tokio::test]
async fn subscription_request_waits_for_an_offline_contact() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice.roster_get().await;
    alice.available().await;
    alice
        .send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    assert_item(&alice.recv_roster_push(BOB).await, "none", true);

    // RFC 6121 §3.1.3: delivered when Bob next becomes available.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.roster_get().await;
    bob.send("<presence/>").await;
    expect_presence(&mut bob, ALICE, Some("subscribe")).await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    assert_item(&alice.recv_roster_push(BOB).await, "to", false);
    expect_presence(&mut alice, BOB_PC, None).await;
}

#[tokio::test]
async fn unsubscribe_and_unsubscribed_update_both_rosters() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    befriend(&mut alice, &mut bob).await;

    // RFC 6121 §3.3: Alice stops following Bob.
    alice
        .send("<presence to='bob@localhost' type='unsubscribe'/>")
        .await;
    assert_item(&alice.recv_roster_push(BOB).await, "from", false);
    assert_item(&bob.recv_roster_push(ALICE).await, "to", false);
    expect_presence(&mut bob, ALICE, Some("unsubscribe")).await;
    // §3.3.3: Bob's resources go unavailable for Alice.
    expect_presence(&mut alice, BOB_PC, Some("unavailable")).await;

    // §3.2: Alice cancels Bob's subscription to her.
    alice
        .send("<presence to='bob@localhost' type='unsubscribed'/>")
        .await;
    assert_item(&alice.recv_roster_push(BOB).await, "none", false);
    assert_item(&bob.recv_roster_push(ALICE).await, "none", false);
    expect_presence(&mut bob, ALICE, Some("unsubscribed")).await;
    expect_presence(&mut bob, ALICE_PHONE, Some("unavailable")).await;

    // No more presence either way.
    alice.presence("<presence><show>xa</show></presence>").await;
    bob.assert_none_before_ping(|el| el.name() == "presence", "presence")
        .await;
    bob.presence("<presence><show>xa</show></presence>").await;
    alice
        .assert_none_before_ping(|el| el.name() == "presence", "presence")
        .await;
}

#[tokio::test]
async fn roster_remove_cancels_both_subscriptions() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    befriend(&mut alice, &mut bob).await;

    let reply = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' subscription='remove'/></query>",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    // RFC 6121 §2.5.2: the push says remove ...
    assert_eq!(
        alice.recv_roster_push(BOB).await.attr("subscription"),
        Some("remove")
    );
    // ... and Bob hears both unsubscribe and unsubscribed.
    expect_presence(&mut bob, ALICE, Some("unsubscribe")).await;
    expect_presence(&mut bob, ALICE, Some("unsubscribed")).await;
    expect_presence(&mut bob, ALICE_PHONE, Some("unavailable")).await;
    expect_presence(&mut alice, BOB_PC, Some("unavailable")).await;

    assert!(roster_items(&alice.roster_get().await).is_empty());
    let roster = bob.roster_get().await;
    assert_item(item_in(&roster, ALICE).expect("alice stays"), "none", false);

    // Removing it again: there is nothing to remove.
    let reply = alice
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:roster'>\
             <item jid='bob@localhost' subscription='remove'/></query>",
        )
        .await;
    assert_eq!(stanza_error(&reply).0, "item-not-found");
}

#[tokio::test]
async fn directed_presence_and_its_unavailable_on_disconnect() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("carol", "secret").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut carol = server.login("carol", "secret", "pc").await;
    alice.available().await;
    carol.available().await;

    // RFC 6121 §4.6: presence to someone who is no contact at all.
    alice
        .send("<presence to='carol@localhost'><status>hello</status></presence>")
        .await;
    let p = expect_presence(&mut carol, ALICE_PHONE, None).await;
    assert_eq!(
        p.get_child("status", NS_CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("hello")
    );
    // Broadcasts are for subscribers only.
    alice
        .presence("<presence><show>dnd</show></presence>")
        .await;
    carol
        .assert_none_before_ping(|el| el.name() == "presence", "broadcast presence")
        .await;

    // §4.6.3: going offline is told to the recipient of directed presence.
    drop(alice);
    expect_presence(&mut carol, ALICE_PHONE, Some("unavailable")).await;
}

#[tokio::test]
async fn directed_presence_to_a_bare_jid_keeps_the_bare_to() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob_pc = server.login("bob", "builder", "pc").await;
    let mut bob_phone = server.login("bob", "builder", "phone").await;
    bob_pc.available().await;
    bob_phone.available().await;
    alice.send("<presence to='bob@localhost'/>").await;
    // Each resource gets it, addressed as it was sent, like a message to the bare JID
    // (RFC 6121 §8.5.2.1.1).
    for bob in [&mut bob_pc, &mut bob_phone] {
        let got = bob.recv_presence_from("alice@localhost/phone").await;
        assert_eq!(got.attr("to"), Some("bob@localhost"), "{got:?}");
    }
}
