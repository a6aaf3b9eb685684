//! Client streams over real sockets: TLS, authentication, binding, limits, shutdown and
//! hostile input.

use outpost_proto::xml::XmlEvent;
use outpost_testkit::*;

#[tokio::test]
async fn two_users_chat_online() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "laptop").await;
    alice.available().await;
    bob.available().await;
    alice
        .send("<message to='bob@localhost' type='chat' id='m1'><body>hi &amp; bye</body></message>")
        .await;
    let got = bob.recv_where(|el| el.name() == "message").await;
    assert_eq!(got.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(
        got.get_child("body", "jabber:client").map(|b| b.text()),
        Some("hi & bye".into())
    );
}

// ---- TLS and stream headers (RFC 6120 §4, §5) ----

#[tokio::test]
async fn starttls_is_required_before_authentication() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_plain().await;
    let features = c.features.clone().expect("features");
    let starttls = features
        .get_child("starttls", NS_TLS)
        .expect("STARTTLS offered");
    assert!(
        starttls.has_child("required", NS_TLS),
        "TLS is mandatory: {features:?}"
    );
    assert!(
        !features.has_child("mechanisms", NS_SASL),
        "no SASL before TLS: {features:?}"
    );
    assert!(!features.has_child("register", NS_REGISTER_FEATURE));

    // Credentials in the clear are refused without being checked (RFC 6120 §6.4.5).
    assert_eq!(
        c.auth_plain("alice", "wonderland").await,
        Err("encryption-required".to_owned())
    );
    // The same connection can still upgrade and log in after that.
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert_eq!(c.recv().await.name(), "proceed");
}

#[tokio::test]
async fn direct_tls_listener_serves_clients() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_direct_tls().await;
    let features = c.features.clone().expect("features");
    assert!(
        !features.has_child("starttls", NS_TLS),
        "TLS is already on: {features:?}"
    );
    assert!(features.has_child("mechanisms", NS_SASL));
    c.auth_plain("alice", "wonderland").await.expect("login");
    c.bind("tls").await;
    assert_eq!(c.jid, "alice@localhost/tls");
    c.assert_quiet().await;
}

#[tokio::test]
async fn stream_to_an_unknown_host_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.connect_tcp().await;
    c.open_to("elsewhere.example").await;
    assert_eq!(c.expect_stream_error().await, "host-unknown");
}

#[tokio::test]
async fn stream_header_is_answered_with_our_domain() {
    let server = TestServer::start().await;
    let c = server.connect_starttls().await;
    let header = c.header.clone().expect("header");
    assert_eq!(header.ns, NS_CLIENT);
    assert_eq!(header.from.as_deref(), Some("localhost"));
    assert_eq!(header.version.as_deref(), Some("1.0"));
    assert!(header.id.is_some_and(|id| id.len() >= 16));
}

// ---- SASL (RFC 6120 §6) ----

#[tokio::test]
async fn plain_wrong_password_then_right_one() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_starttls().await;
    let mechanisms: Vec<String> = c
        .features
        .as_ref()
        .and_then(|f| f.get_child("mechanisms", NS_SASL))
        .expect("mechanisms")
        .children()
        .map(|m| m.text())
        .collect();
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        assert!(mechanisms.iter().any(|x| x == m), "{m} in {mechanisms:?}");
    }
    assert_eq!(
        c.auth_plain("alice", "looking-glass").await,
        Err("not-authorized".to_owned())
    );
    assert_eq!(
        c.auth_plain("nobody", "wonderland").await,
        Err("not-authorized".to_owned()),
        "an unknown user looks like a wrong password"
    );
    // RFC 6120 §6.4.5: the client may retry on the same stream.
    c.auth_plain("alice", "wonderland").await.expect("login");
    c.bind("phone").await;
    c.assert_quiet().await;
}

#[tokio::test]
async fn unknown_mechanism_is_refused() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_starttls().await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-UNKNOWN'>=</auth>")
        .await;
    let failure = c.recv().await;
    assert_eq!(failure.name(), "failure");
    // RFC 6120 §6.5.6.
    assert!(
        failure.has_child("invalid-mechanism", NS_SASL),
        "{failure:?}"
    );
    c.auth_plain("alice", "wonderland").await.expect("login");
}

#[tokio::test]
async fn scram_sha1_and_sha256_log_in() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    for mech in [Scram::Sha1, Scram::Sha256] {
        let mut c = server.connect_starttls().await;
        c.auth_scram(mech, "alice", "wonderland")
            .await
            .unwrap_or_else(|e| panic!("{mech:?}: {e}"));
        c.bind(&format!("{mech:?}")).await;
        c.assert_quiet().await;
    }
}

#[tokio::test]
async fn scram_wrong_password_and_unknown_user_fail() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    for mech in [Scram::Sha1, Scram::Sha256] {
        let mut c = server.connect_starttls().await;
        assert_eq!(
            c.auth_scram(mech, "alice", "looking-glass").await,
            Err("not-authorized".to_owned()),
            "{mech:?}"
        );
        assert_eq!(
            c.auth_scram(mech, "nobody", "wonderland").await,
            Err("not-authorized".to_owned()),
            "{mech:?}"
        );
    }
}

#[tokio::test]
async fn repeated_failures_close_the_stream() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_starttls().await;
    let payload = "AGFsaWNlAHdyb25n"; // \0alice\0wrong
    for _ in 0..3 {
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
    }
    assert_eq!(c.expect_stream_error().await, "policy-violation");
}

#[tokio::test]
async fn failed_logins_throttle_the_account() {
    let server = TestServer::start_with(|c| c.limits.login_failures_per_account = 2).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    for _ in 0..2 {
        let mut c = server.connect_starttls().await;
        assert_eq!(
            c.auth_plain("alice", "guess").await,
            Err("not-authorized".to_owned())
        );
    }
    // Now even the right password is refused, with every mechanism (RFC 6120 §6.5.11).
    let mut c = server.connect_starttls().await;
    assert_eq!(
        c.auth_plain("alice", "wonderland").await,
        Err("temporary-auth-failure".to_owned())
    );
    let mut c = server.connect_starttls().await;
    assert_eq!(
        c.auth_scram(Scram::Sha256, "alice", "wonderland").await,
        Err("temporary-auth-failure".to_owned())
    );
    // Other accounts are not affected.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.assert_quiet().await;
}

#[tokio::test]
async fn plaintext_auth_when_allowed_by_config() {
    let server = TestServer::start_with(|c| c.auth.allow_plaintext_without_tls = true).await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_plain().await;
    let features = c.features.clone().expect("features");
    let starttls = features
        .get_child("starttls", NS_TLS)
        .expect("STARTTLS still offered");
    assert!(!starttls.has_child("required", NS_TLS));
    assert!(features.has_child("mechanisms", NS_SASL));
    c.auth_plain("alice", "wonderland").await.expect("login");
    c.bind("plain").await;
    c.assert_quiet().await;
}

// ---- resource binding (RFC 6120 §7) ----

#[tokio::test]
async fn bind_without_resource_gets_a_generated_one() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut c = server.connect_starttls().await;
    c.auth_plain("alice", "wonderland").await.expect("login");
    let jid = c.try_bind(None).await.expect("bind");
    let resource = jid
        .strip_prefix("alice@localhost/")
        .unwrap_or_else(|| panic!("{jid}"));
    assert!(!resource.is_empty());
    c.assert_quiet().await;

    // A second one differs.
    let mut d = server.connect_starttls().await;
    d.auth_plain("alice", "wonderland").await.expect("login");
    let other = d.try_bind(None).await.expect("bind");
    assert_ne!(jid, other);
}

#[tokio::test]
async fn binding_the_same_full_jid_replaces_the_old_session() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut old = server.login("alice", "wonderland", "phone").await;
    old.available().await;
    let mut new = server.login("alice", "wonderland", "phone").await;
    // RFC 6120 §7.7.2.2: the server may terminate the old session with `conflict`.
    assert_eq!(old.expect_stream_error().await, "conflict");
    new.available().await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.send("<message to='alice@localhost/phone' id='m'><body>still there?</body></message>")
        .await;
    let got = new.recv_message().await;
    assert!(is_message(&got, "bob@localhost/pc", "still there?"));
}

#[tokio::test]
async fn too_many_resources_are_refused() {
    let server = TestServer::start_with(|c| c.limits.max_resources_per_account = 2).await;
    server.add_user("alice", "wonderland").await;
    let mut one = server.login("alice", "wonderland", "one").await;
    let _two = server.login("alice", "wonderland", "two").await;
    let mut three = server.connect_starttls().await;
    three
        .auth_plain("alice", "wonderland")
        .await
        .expect("login");
    let refused = three.try_bind(Some("three")).await.expect_err("refused");
    // RFC 6120 §7.6.2.1: resource-constraint, of type wait.
    assert_eq!(
        stanza_error(&refused),
        ("resource-constraint".to_owned(), "wait".to_owned())
    );
    // Rebinding an existing resource is a replacement, not one more.
    let _one_again = server.login("alice", "wonderland", "one").await;
    assert_eq!(one.expect_stream_error().await, "conflict");
}

// ---- shutdown, idle connections and the connection cap ----

#[tokio::test]
async fn shutdown_closes_streams_politely() {
    let mut server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut idle = server.connect_starttls().await;
    let starttls = server.starttls;
    let ((), condition, idle_condition) =
        tokio::join!(server.stop(), alice.expect_close(), idle.expect_close());
    assert_eq!(condition.as_deref(), Some("system-shutdown"));
    assert!(alice.saw_stream_close, "</stream:stream> after the error");
    assert_eq!(idle_condition.as_deref(), Some("system-shutdown"));
    assert!(idle.saw_stream_close);
    assert!(
        tokio::net::TcpStream::connect(starttls).await.is_err(),
        "no longer listening"
    );
}

// Paused time (tokio's test clock, which jumps to the next timer whenever every task
// waits): the server's ping and idle timers run in virtual seconds, while the bytes still
// cross real loopback sockets. The memory store keeps the server off blocking threads.
#[tokio::test(start_paused = true)]
async fn idle_client_is_pinged_then_disconnected() {
    let server = TestServer::start_in_memory_with(|c| {
        // A ping after 1 s of silence, the close 3 s after the last read.
        c.limits.ping_interval_secs = 1;
        c.limits.idle_timeout_secs = 3;
    })
    .await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;

    // Answering the server's ping (XEP-0199 §4.2) keeps the connection.
    for _ in 0..2 {
        let ping = alice.recv().await;
        assert_eq!(ping.name(), "iq");
        assert_eq!(ping.attr("type"), Some("get"));
        assert_eq!(ping.attr("from"), Some("localhost"));
        assert_eq!(ping.attr("to"), Some("alice@localhost/phone"));
        assert!(ping.has_child("ping", NS_PING));
        let id = ping.attr("id").expect("id");
        alice
            .send(&format!("<iq type='result' id='{id}' to='localhost'/>"))
            .await;
    }
    // A ping left unanswered ends it.
    let ping = alice.recv().await;
    assert!(ping.has_child("ping", NS_PING));
    assert_eq!(alice.expect_stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    server.add_user("alice", "wonderland").await;
    let mut first = server.login("alice", "wonderland", "one").await;
    let _second = server.connect_starttls().await;

    let mut third = server.connect_tcp().await;
    // The server may close before or after reading this.
    let _ = third.try_send(stream_open("localhost").as_bytes()).await;
    assert_eq!(third.next_event().await, None, "closed without a stream");

    // A slot frees up when a connection ends.
    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = server.connect_tcp().await;
        let _ = c.try_send(stream_open("localhost").as_bytes()).await;
        if let Some(XmlEvent::StreamOpen(_)) = c.next_event().await {
            break;
        }
        // The session that ended may not have released its slot yet.
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::task::yield_now().await;
    }
}

// ---- hostile input (RFC 6120 §4.9.3, §11, §13) ----

/// Three users online; `alice` and `bob` must keep working whatever `mallory` does.
async fn three_users(server: &TestServer) -> (Client, Client, Client) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    server.add_user("mallory", "evil").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    let mut mallory = server.login("mallory", "evil", "x").await;
    alice.available().await;
    bob.available().await;
    mallory.available().await;
    (alice, bob, mallory)
}

async fn others_unaffected(alice: &mut Client, bob: &mut Client) {
    let text = unique("still fine");
    alice
        .send(&format!(
            "<message to='bob@localhost' type='chat'><body>{text}</body></message>"
        ))
        .await;
    let got = bob.recv_message().await;
    assert!(is_message(&got, "alice@localhost/phone", &text), "{got:?}");
}

#[tokio::test]
async fn malformed_xml_closes_only_that_stream() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut mallory) = three_users(&server).await;
    mallory
        .send("<message to='bob@localhost'><body>oops</bdy></message>")
        .await;
    assert_eq!(mallory.expect_stream_error().await, "not-well-formed");
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
    others_unaffected(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn oversized_stanza_is_a_policy_violation() {
    let server = TestServer::start_with(|c| c.limits.max_stanza_bytes = 10_000).await;
    let (mut alice, mut bob, mut mallory) = three_users(&server).await;
    // Just under the limit passes (RFC 6120 §13.12 asks for at least 10000 bytes).
    let fits = "a".repeat(9_000);
    mallory
        .send(&format!(
            "<message to='bob@localhost'><body>{fits}</body></message>"
        ))
        .await;
    assert_eq!(body(&bob.recv_message().await), Some(fits));

    let big = "a".repeat(20_000);
    let _ = mallory
        .try_send(format!("<message to='bob@localhost'><body>{big}</body></message>").as_bytes())
        .await;
    assert_eq!(mallory.expect_stream_error().await, "policy-violation");
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
    others_unaffected(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn deep_nesting_is_a_policy_violation() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut mallory) = three_users(&server).await;
    let depth = 10_000;
    let xml = format!(
        "<message to='bob@localhost'>{}{}</message>",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    );
    let _ = mallory.try_send(xml.as_bytes()).await;
    assert_eq!(mallory.expect_stream_error().await, "policy-violation");
    others_unaffected(&mut alice, &mut bob).await;
    // The server still accepts new logins.
    let mut again = server.login("mallory", "evil", "y").await;
    again.assert_quiet().await;
}

#[tokio::test]
async fn doctype_before_the_stream_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.connect_tcp().await;
    let _ = c
        .try_send(
            b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY lol 'lol'>]>\
              <stream:stream to='localhost' version='1.0' xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .await;
    let condition = c.expect_stream_error().await;
    assert!(
        condition == "restricted-xml" || condition == "not-well-formed",
        "{condition}"
    );
}

#[tokio::test]
async fn entity_reference_in_a_stanza_is_refused() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut mallory) = three_users(&server).await;
    mallory
        .send("<message to='bob@localhost'><body>&xxe;</body></message>")
        .await;
    let condition = mallory.expect_stream_error().await;
    assert!(
        condition == "restricted-xml" || condition == "not-well-formed",
        "{condition}"
    );
    others_unaffected(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn spoofed_from_is_replaced_by_the_real_one() {
    let server = TestServer::start().await;
    let (_alice, mut bob, mut mallory) = three_users(&server).await;
    mallory
        .send(
            "<message from='alice@localhost/phone' to='bob@localhost' type='chat'>\
             <body>trust me</body></message>",
        )
        .await;
    let got = bob.recv_message().await;
    assert_eq!(got.attr("from"), Some("mallory@localhost/x"));
    assert_eq!(body(&got).as_deref(), Some("trust me"));
}

#[tokio::test]
async fn unparsable_address_gets_jid_malformed() {
    let server = TestServer::start().await;
    let (_alice, _bob, mut mallory) = three_users(&server).await;
    mallory
        .send("<message to='@localhost' id='bad-to' type='chat'><body>x</body></message>")
        .await;
    let err = mallory.recv_message().await;
    assert_eq!(err.attr("id"), Some("bad-to"));
    assert_eq!(stanza_error(&err).0, "jid-malformed");
    // An IQ with an empty resource part (RFC 7622 §3.4) gets the same answer.
    let reply = mallory
        .query(
            "get",
            Some("bob@localhost/"),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await;
    assert_eq!(stanza_error(&reply).0, "jid-malformed");
}

#[tokio::test]
async fn unknown_top_level_element_is_unsupported_stanza_type() {
    let server = TestServer::start().await;
    let (mut alice, mut bob, mut mallory) = three_users(&server).await;
    mallory.send("<foo xmlns='jabber:client'/>").await;
    assert_eq!(
        mallory.expect_stream_error().await,
        "unsupported-stanza-type"
    );
    others_unaffected(&mut alice, &mut bob).await;
}
