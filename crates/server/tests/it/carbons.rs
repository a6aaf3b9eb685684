//! Message carbons (XEP-0280) and the hints that govern them (XEP-0334) over real sockets.

use outpost_proto::minidom::Element;
use outpost_testkit::*;

const NS_CARBONS: &str = "urn:xmpp:carbons:2";

async fn users(server: &TestServer) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
}

/// Turns carbons on (or off) for a client.
async fn carbons(c: &mut Client, on: bool) {
    let what = if on { "enable" } else { "disable" };
    let reply = c
        .query("set", None, &format!("<{what} xmlns='{NS_CARBONS}'/>"))
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

/// The forwarded message inside a carbon of `kind`, checking the wrapper on the way.
fn forwarded<'a>(el: &'a Element, kind: &str, owner: &str) -> &'a Element {
    assert_eq!(
        el.attr("from"),
        Some(owner),
        "carbons come from the bare JID: {el:?}"
    );
    el.get_child(kind, NS_CARBONS)
        .and_then(|k| k.get_child("forwarded", NS_FORWARD))
        .and_then(|f| f.get_child("message", NS_CLIENT))
        .unwrap_or_else(|| panic!("no {kind} carbon in {el:?}"))
}

/// Alice on two clients, the laptop with carbons on; bob on one.
async fn setup(server: &TestServer) -> (Client, Client, Client) {
    users(server).await;
    let mut phone = server.login("alice", "wonderland", "phone").await;
    let mut laptop = server.login("alice", "wonderland", "laptop").await;
    phone.available_with_priority(10).await;
    laptop.available_with_priority(1).await;
    carbons(&mut laptop, true).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    (phone, laptop, bob)
}

#[tokio::test]
async fn what_one_client_sends_and_receives_the_others_see() {
    let server = TestServer::start().await;
    let (mut phone, mut laptop, mut bob) = setup(&server).await;

    phone.send(&chat("bob@localhost", "from the phone")).await;
    let sent = laptop.recv_message().await;
    let original = forwarded(&sent, "sent", "alice@localhost");
    assert_eq!(original.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(body(original).as_deref(), Some("from the phone"));
    bob.recv_message().await;

    // To the phone's full JID: the laptop sees it too, with the archive's stanza-id.
    bob.send(&chat("alice@localhost/phone", "to the phone"))
        .await;
    assert_eq!(
        body(&phone.recv_message().await).as_deref(),
        Some("to the phone")
    );
    let received = laptop.recv_message().await;
    let original = forwarded(&received, "received", "alice@localhost");
    assert_eq!(body(original).as_deref(), Some("to the phone"));
    assert!(original.has_child("stanza-id", NS_SID));

    // To the bare JID: the phone has the higher priority, the laptop gets the copy.
    bob.send(&chat("alice@localhost", "to alice")).await;
    assert_eq!(
        body(&phone.recv_message().await).as_deref(),
        Some("to alice")
    );
    let received = laptop.recv_message().await;
    assert_eq!(
        body(forwarded(&received, "received", "alice@localhost")).as_deref(),
        Some("to alice")
    );
    // The phone never asked for carbons: it gets nothing of the laptop's.
    laptop.send(&chat("bob@localhost", "from the laptop")).await;
    bob.recv_message().await;
    phone
        .assert_none_before_ping(|el| el.name() == "message", "carbon")
        .await;
    laptop
        .assert_none_before_ping(|el| el.has_child("sent", NS_CARBONS), "own carbon")
        .await;
}

#[tokio::test]
async fn private_and_no_copy_messages_are_not_copied() {
    let server = TestServer::start().await;
    let (mut phone, mut laptop, mut bob) = setup(&server).await;
    phone
        .send(
            "<message to='bob@localhost' type='chat'><body>just us</body>\
             <private xmlns='urn:xmpp:carbons:2'/></message>",
        )
        .await;
    let got = bob.recv_message().await;
    assert!(
        !got.has_child("private", NS_CARBONS),
        "the marker is ours: {got:?}"
    );
    bob.send(
        "<message to='alice@localhost/phone' type='chat'><body>one copy</body>\
         <no-copy xmlns='urn:xmpp:hints'/></message>",
    )
    .await;
    phone.recv_message().await;
    laptop
        .assert_none_before_ping(|el| el.name() == "message", "carbon")
        .await;
    // Turned off, nothing more.
    carbons(&mut laptop, false).await;
    phone.send(&chat("bob@localhost", "after")).await;
    bob.recv_message().await;
    laptop
        .assert_none_before_ping(|el| el.name() == "message", "carbon")
        .await;
}

#[tokio::test]
async fn the_server_says_it_does_carbons() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let disco = alice
        .query(
            "get",
            Some("localhost"),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    let q = disco.get_child("query", NS_DISCO_INFO).expect("disco");
    assert!(
        q.children().any(|f| f.attr("var") == Some(NS_CARBONS)),
        "{disco:?}"
    );
}
