//! External components (XEP-0114) and push notifications (XEP-0357): a small app server,
//! connected as a component on loopback, is told when a message waits for a user whose
//! client registered it, and refusing a notification for good ends the registration.

use outpost_proto::component::handshake;
use outpost_proto::minidom::Element;
use outpost_proto::xml::XmlEvent;
use outpost_server::ListenerKind;
use outpost_testkit::*;

const APP: &str = "push.localhost";
const SECRET: &str = "the app server's secret";
const NS_PUSH: &str = "urn:xmpp:push:0";

async fn server() -> TestServer {
    let server = TestServer::start_with(|c| {
        c.components.insert(APP.to_owned(), SECRET.to_owned());
    })
    .await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    server
}

/// Connects as the app server's component and completes the handshake (XEP-0114 §3).
async fn app_server(server: &TestServer, secret: &str) -> Result<Client, Option<String>> {
    let addr = server
        .listener(ListenerKind::Component)
        .expect("a component listener");
    let mut c = Client::connect(addr, APP).await;
    c.send(&format!(
        "<stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{APP}'>"
    ))
    .await;
    let id = match c.next_event().await {
        Some(XmlEvent::StreamOpen(h)) => h.id.expect("a stream id"),
        other => panic!("expected the stream header, got {other:?}"),
    };
    c.send(&format!(
        "<handshake>{}</handshake>",
        handshake(&id, secret)
    ))
    .await;
    match c.next_event().await {
        Some(XmlEvent::Stanza(el)) if el.name() == "handshake" => Ok(c),
        Some(XmlEvent::Stanza(el)) if el.name() == "error" => {
            Err(el.children().next().map(|c| c.name().to_owned()))
        }
        other => panic!("unexpected answer to the handshake: {other:?}"),
    }
}

/// Registers alice's client with the app server, with a secret among the publish options.
async fn register(alice: &mut Client, node: &str) -> Element {
    alice
        .query(
            "set",
            None,
            &format!(
                "<enable xmlns='{NS_PUSH}' jid='{APP}' node='{node}'>\
                 <x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='secret'><value>device-token</value></field></x></enable>"
            ),
        )
        .await
}

fn summary_field(iq: &Element, var: &str) -> Option<String> {
    iq.get_child("pubsub", "http://jabber.org/protocol/pubsub")?
        .get_child("publish", "http://jabber.org/protocol/pubsub")?
        .get_child("item", "http://jabber.org/protocol/pubsub")?
        .get_child("notification", NS_PUSH)?
        .get_child("x", "jabber:x:data")?
        .children()
        .find(|f| f.attr("var") == Some(var))
        .and_then(|f| f.children().next())
        .map(Element::text)
}

#[tokio::test]
async fn components_need_the_secret() {
    let server = server().await;
    assert_eq!(
        app_server(&server, "not the secret").await.err(),
        Some(Some("not-authorized".to_owned()))
    );
    let mut app = app_server(&server, SECRET).await.expect("the right secret");
    // Once connected, the component is an address like any: a user's message reaches it.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.send(&format!(
        "<message to='{APP}' type='chat'><body>hi app</body></message>"
    ))
    .await;
    let got = app.recv_message().await;
    assert_eq!(got.attr("from"), Some("bob@localhost/pc"));
    // In the component namespace on this stream (XEP-0114 §3).
    assert_eq!(got.ns(), "jabber:component:accept");
    let text = got
        .get_child("body", "jabber:component:accept")
        .map(Element::text);
    assert_eq!(text.as_deref(), Some("hi app"));
    // And it answers in its own name only.
    app.send("<message from='push.localhost' to='bob@localhost/pc'><body>hi bob</body></message>")
        .await;
    assert_eq!(body(&bob.recv_message().await).as_deref(), Some("hi bob"));
}

#[tokio::test]
async fn a_message_for_a_registered_user_wakes_the_app_server() {
    let server = server().await;
    let mut app = app_server(&server, SECRET).await.expect("connected");
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let reply = register(&mut alice, "alice-phone").await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let disco = alice
        .query("get", None, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
        .await;
    assert!(
        disco
            .get_child("query", NS_DISCO_INFO)
            .is_some_and(|q| q.children().any(|f| f.attr("var") == Some(NS_PUSH))),
        "{disco:?}"
    );
    alice.send("</stream:stream>").await;
    alice.expect_close().await;

    // Alice is offline: bob's message is stored, and the app server hears of it.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.send(&chat("alice@localhost", "wake up")).await;
    let notification = app.recv_where(|el| el.name() == "iq").await;
    assert_eq!(notification.attr("from"), Some("alice@localhost"));
    assert_eq!(notification.attr("type"), Some("set"));
    let publish = notification
        .get_child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.get_child("publish", "http://jabber.org/protocol/pubsub"))
        .expect("a publish");
    assert_eq!(publish.attr("node"), Some("alice-phone"));
    assert_eq!(
        summary_field(&notification, "message-count").as_deref(),
        Some("1")
    );
    // Who wrote and what, only if the operator allows it.
    assert_eq!(summary_field(&notification, "last-message-body"), None);
    assert_eq!(summary_field(&notification, "last-message-sender"), None);
    let options = notification
        .get_child("pubsub", "http://jabber.org/protocol/pubsub")
        .and_then(|p| p.get_child("publish-options", "http://jabber.org/protocol/pubsub"))
        .map(|o| format!("{o:?}"))
        .unwrap_or_default();
    assert!(
        options.contains("device-token"),
        "the client's options go along: {options}"
    );
    app.send(&format!(
        "<iq type='result' from='{APP}' to='alice@localhost' id='{}'/>",
        notification.attr("id").unwrap_or_default()
    ))
    .await;

    // The device is gone: the app server refuses, and the registration goes.
    bob.send(&chat("alice@localhost", "again")).await;
    let notification = app.recv_where(|el| el.name() == "iq").await;
    app.send(&format!(
        "<iq type='error' from='{APP}' to='alice@localhost' id='{}'>\
         <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        notification.attr("id").unwrap_or_default()
    ))
    .await;
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        match server.store.push_registrations().await {
            Ok(regs) if regs.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_sleeping_phone_with_stream_management_is_woken_too() {
    let server = server().await;
    let mut app = app_server(&server, SECRET).await.expect("connected");
    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice.enable_sm().await;
    alice.available().await;
    register(&mut alice, "n").await;
    // The phone's connection dies; its session waits to be resumed.
    drop(alice);
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.send(&chat("alice@localhost/phone", "are you there?"))
        .await;
    let notification = app.recv_where(|el| el.name() == "iq").await;
    assert_eq!(notification.attr("from"), Some("alice@localhost"));
    // A client may not name its own account as the app server.
    let mut carol_like = server.login("bob", "builder", "tab").await;
    let refused = carol_like
        .query(
            "set",
            None,
            &format!("<enable xmlns='{NS_PUSH}' jid='bob@localhost' node='x'/>"),
        )
        .await;
    assert_eq!(stanza_error(&refused).0, "not-acceptable");
}
