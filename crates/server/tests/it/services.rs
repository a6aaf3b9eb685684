//! IQ services of the server over real sockets: discovery (XEP-0030), version (XEP-0092),
//! ping (XEP-0199), vCards (XEP-0054), blocking (XEP-0191) and registration (XEP-0077).

use outpost_proto::minidom::Element;
use outpost_testkit::*;

async fn alice_and_bob(server: &TestServer) -> (Client, Client) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    alice.available().await;
    bob.available().await;
    (alice, bob)
}

fn assert_result(reply: &Element) {
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

fn features(info: &Element) -> Vec<String> {
    info.get_child("query", NS_DISCO_INFO)
        .expect("disco#info query")
        .children()
        .filter(|c| c.is("feature", NS_DISCO_INFO))
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect()
}

fn identity(info: &Element) -> (String, String) {
    let id = info
        .get_child("query", NS_DISCO_INFO)
        .and_then(|q| q.get_child("identity", NS_DISCO_INFO))
        .expect("identity");
    (
        id.attr("category").unwrap_or_default().to_owned(),
        id.attr("type").unwrap_or_default().to_owned(),
    )
}

const DISCO_INFO: &str = "<query xmlns='http://jabber.org/protocol/disco#info'/>";
const PING: &str = "<ping xmlns='urn:xmpp:ping'/>";

// ---- discovery, version, ping ----

#[tokio::test]
async fn disco_info_on_the_server() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    let info = alice.query("get", Some("localhost"), DISCO_INFO).await;
    assert_result(&info);
    assert_eq!(info.attr("from"), Some("localhost"));
    assert_eq!(info.attr("to"), Some("alice@localhost/phone"));
    assert_eq!(identity(&info), ("server".to_owned(), "im".to_owned()));
    let features = features(&info);
    for f in [
        NS_DISCO_INFO,
        NS_DISCO_ITEMS,
        NS_PING,
        NS_VCARD,
        NS_VERSION,
        NS_BLOCKING,
    ] {
        assert!(features.iter().any(|x| x == f), "{f} in {features:?}");
    }
}

#[tokio::test]
async fn disco_items_on_the_server() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    let items = alice
        .query(
            "get",
            Some("localhost"),
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert_result(&items);
    let query = items.get_child("query", NS_DISCO_ITEMS).expect("query");
    assert!(query.children().all(|c| c.is("item", NS_DISCO_ITEMS)));
}

#[tokio::test]
async fn disco_info_on_an_account() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    // XEP-0030 §3.1 on a bare JID: the server answers for the account.
    let info = alice.query("get", Some("bob@localhost"), DISCO_INFO).await;
    assert_result(&info);
    assert_eq!(info.attr("from"), Some("bob@localhost"));
    assert_eq!(
        identity(&info),
        ("account".to_owned(), "registered".to_owned())
    );
    let own = alice
        .query("get", Some("alice@localhost"), DISCO_INFO)
        .await;
    assert_eq!(
        identity(&own),
        ("account".to_owned(), "registered".to_owned())
    );
    // RFC 6121 §8.5.1: no such account.
    let none = alice
        .query("get", Some("nobody@localhost"), DISCO_INFO)
        .await;
    assert_eq!(stanza_error(&none).0, "service-unavailable");
}

#[tokio::test]
async fn software_version() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    let reply = alice
        .query(
            "get",
            Some("localhost"),
            "<query xmlns='jabber:iq:version'/>",
        )
        .await;
    assert_result(&reply);
    let q = reply.get_child("query", NS_VERSION).expect("query");
    assert_eq!(
        q.get_child("name", NS_VERSION).map(|n| n.text()).as_deref(),
        Some("Outpost")
    );
    assert!(
        q.get_child("version", NS_VERSION)
            .is_some_and(|v| !v.text().is_empty())
    );
}

#[tokio::test]
async fn ping_the_server() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    let reply = alice.query("get", Some("localhost"), PING).await;
    assert_result(&reply);
    assert_eq!(reply.attr("from"), Some("localhost"));
    assert!(reply.children().next().is_none());
    // Without `to` it is for the server too (RFC 6120 §10.3.3).
    assert_result(&alice.query("get", None, PING).await);
}

#[tokio::test]
async fn unknown_iq_gets_service_unavailable_and_bad_iqs_bad_request() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    let reply = alice
        .query(
            "get",
            Some("localhost"),
            "<query xmlns='urn:example:nothing'/>",
        )
        .await;
    assert_eq!(
        stanza_error(&reply),
        ("service-unavailable".to_owned(), "cancel".to_owned())
    );
    // RFC 6120 §8.2.3: a get carries exactly one payload.
    let reply = alice.query("get", Some("localhost"), "").await;
    assert_eq!(stanza_error(&reply).0, "bad-request");
    // An IQ to a resource that is not there (RFC 6121 §8.5.3.1).
    let reply = alice
        .query("get", Some("bob@localhost/nowhere"), PING)
        .await;
    assert_eq!(stanza_error(&reply).0, "service-unavailable");
}

#[tokio::test]
async fn iq_between_clients_is_routed_and_answered() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    alice
        .send("<iq type='get' id='p2p' to='bob@localhost/pc'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = bob.recv_where(|el| el.name() == "iq").await;
    assert_eq!(got.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(got.attr("id"), Some("p2p"));
    bob.send("<iq type='result' id='p2p' to='alice@localhost/phone'/>")
        .await;
    let reply = alice
        .recv_where(|el| el.name() == "iq" && el.attr("id") == Some("p2p"))
        .await;
    assert_result(&reply);
    assert_eq!(reply.attr("from"), Some("bob@localhost/pc"));
}

// ---- vCards ----

#[tokio::test]
async fn vcard_set_then_get_by_owner_and_others() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let set = alice
        .query(
            "set",
            None,
            "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al &amp; co</NICKNAME>\
             </vCard>",
        )
        .await;
    assert_result(&set);

    let fn_of = |reply: &Element| {
        reply
            .get_child("vCard", NS_VCARD)
            .and_then(|v| v.get_child("FN", NS_VCARD))
            .map(|f| f.text())
    };
    let own = alice
        .query("get", None, "<vCard xmlns='vcard-temp'/>")
        .await;
    assert_result(&own);
    assert_eq!(fn_of(&own).as_deref(), Some("Alice Liddell"));
    assert_eq!(
        own.get_child("vCard", NS_VCARD)
            .and_then(|v| v.get_child("NICKNAME", NS_VCARD))
            .map(|n| n.text())
            .as_deref(),
        Some("al & co")
    );

    let theirs = bob
        .query(
            "get",
            Some("alice@localhost"),
            "<vCard xmlns='vcard-temp'/>",
        )
        .await;
    assert_result(&theirs);
    assert_eq!(theirs.attr("from"), Some("alice@localhost"));
    assert_eq!(fn_of(&theirs).as_deref(), Some("Alice Liddell"));

    // Nobody writes someone else's vCard.
    let hijack = bob
        .query(
            "set",
            Some("alice@localhost"),
            "<vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard>",
        )
        .await;
    assert_eq!(hijack.attr("type"), Some("error"), "{hijack:?}");
    let own = alice
        .query("get", None, "<vCard xmlns='vcard-temp'/>")
        .await;
    assert_eq!(fn_of(&own).as_deref(), Some("Alice Liddell"));

    // XEP-0054 §3.1: no vCard yet is an empty one.
    let empty = bob.query("get", None, "<vCard xmlns='vcard-temp'/>").await;
    assert_result(&empty);
    let card = empty.get_child("vCard", NS_VCARD).expect("vCard");
    assert!(card.children().next().is_none());
}

// ---- blocking ----

fn blocklist(reply: &Element) -> Vec<String> {
    reply
        .get_child("blocklist", NS_BLOCKING)
        .expect("blocklist")
        .children()
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn blocking_a_contact_stops_messages_both_ways() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let list = alice
        .query("get", None, "<blocklist xmlns='urn:xmpp:blocking'/>")
        .await;
    assert!(blocklist(&list).is_empty());

    let set = alice
        .query(
            "set",
            None,
            "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>",
        )
        .await;
    assert_result(&set);
    // XEP-0191 §3.3: the change is pushed to resources that asked for the list.
    let push = alice
        .recv_where(|el| el.name() == "iq" && el.attr("type") == Some("set"))
        .await;
    let block = push.get_child("block", NS_BLOCKING).expect("block push");
    assert_eq!(
        block.children().next().and_then(|i| i.attr("jid")),
        Some("bob@localhost")
    );

    // §3.5: the blocked contact's messages bounce ...
    bob.send("<message to='alice@localhost' id='b1' type='chat'><body>hey</body></message>")
        .await;
    let err = bob.recv_message().await;
    assert_eq!(err.attr("id"), Some("b1"));
    assert_eq!(err.attr("from"), Some("alice@localhost"));
    assert_eq!(stanza_error(&err).0, "service-unavailable");
    alice
        .assert_none_before_ping(|el| el.name() == "message", "message")
        .await;

    // ... and ours to them are refused with the blocking error (§3.6).
    alice
        .send("<message to='bob@localhost' id='a1' type='chat'><body>psst</body></message>")
        .await;
    let err = alice.recv_message().await;
    assert_eq!(err.attr("id"), Some("a1"));
    assert_eq!(
        stanza_error(&err),
        ("not-acceptable".to_owned(), "cancel".to_owned())
    );
    assert!(
        err.get_child("error", NS_CLIENT)
            .is_some_and(|e| e.has_child("blocked", NS_BLOCKING_ERRORS)),
        "{err:?}"
    );
    bob.assert_none_before_ping(|el| el.name() == "message", "message")
        .await;

    let list = alice
        .query("get", None, "<blocklist xmlns='urn:xmpp:blocking'/>")
        .await;
    assert_eq!(blocklist(&list), ["bob@localhost"]);

    // §3.4: an unblock without items unblocks everyone.
    let unblock = alice
        .query("set", None, "<unblock xmlns='urn:xmpp:blocking'/>")
        .await;
    assert_result(&unblock);
    let push = alice
        .recv_where(|el| el.name() == "iq" && el.attr("type") == Some("set"))
        .await;
    assert!(push.has_child("unblock", NS_BLOCKING));
    let list = alice
        .query("get", None, "<blocklist xmlns='urn:xmpp:blocking'/>")
        .await;
    assert!(blocklist(&list).is_empty());
    bob.send("<message to='alice@localhost' type='chat'><body>again</body></message>")
        .await;
    let got = alice.recv_message().await;
    assert!(is_message(&got, "bob@localhost/pc", "again"));
}

#[tokio::test]
async fn blocked_contact_cannot_fill_the_offline_queue() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let set = alice
        .query(
            "set",
            None,
            "<block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block>",
        )
        .await;
    assert_result(&set);
    alice.close().await;

    bob.send("<message to='alice@localhost' id='b2' type='chat'><body>hey</body></message>")
        .await;
    let err = bob.recv_message().await;
    assert_eq!(err.attr("id"), Some("b2"));
    assert_eq!(stanza_error(&err).0, "service-unavailable");

    let mut alice = server.login("alice", "wonderland", "phone").await;
    alice.available().await;
    alice
        .assert_none_before_ping(|el| el.name() == "message", "message")
        .await;
}

#[tokio::test]
async fn block_without_items_is_a_bad_request() {
    let server = TestServer::start().await;
    let (mut alice, _bob) = alice_and_bob(&server).await;
    let reply = alice
        .query("set", None, "<block xmlns='urn:xmpp:blocking'/>")
        .await;
    assert_eq!(stanza_error(&reply).0, "bad-request");
}

// ---- in-band registration ----

const REGISTER_GET: &str = "<query xmlns='jabber:iq:register'/>";

fn register_set(user: &str, password: &str) -> String {
    format!(
        "<query xmlns='jabber:iq:register'><username>{user}</username>\
         <password>{password}</password></query>"
    )
}

#[tokio::test]
async fn registration_creates_an_account_once() {
    let server = TestServer::start().await;
    let mut c = server.connect_starttls().await;
    assert!(
        c.features
            .as_ref()
            .is_some_and(|f| f.has_child("register", NS_REGISTER_FEATURE))
    );
    let form = c.query("get", None, REGISTER_GET).await;
    assert_result(&form);
    let q = form.get_child("query", NS_REGISTER).expect("query");
    assert!(q.has_child("username", NS_REGISTER));
    assert!(q.has_child("password", NS_REGISTER));

    assert_result(&c.query("set", None, &register_set("newbie", "fresh")).await);
    // XEP-0077 §3.1: a taken name is a conflict.
    let mut d = server.connect_starttls().await;
    let taken = d.query("set", None, &register_set("newbie", "other")).await;
    assert_eq!(stanza_error(&taken).0, "conflict");

    let mut newbie = server.login("newbie", "fresh", "pc").await;
    newbie.assert_quiet().await;

    // The username is a localpart: nothing that would make an address elsewhere.
    for bad in ["evil@elsewhere.example", "evil/resource", ""] {
        let reply = d.query("set", None, &register_set(bad, "pw")).await;
        assert_eq!(reply.attr("type"), Some("error"), "{bad}: {reply:?}");
    }
    // Usernames are case-folded (RFC 7613 §3.2) like JIDs.
    assert_result(&d.query("set", None, &register_set("Upper", "case")).await);
    let mut upper = server.login("upper", "case", "pc").await;
    assert_eq!(upper.jid, "upper@localhost/pc");
    upper.assert_quiet().await;
    assert_eq!(
        d.auth_plain("newbie", "other").await,
        Err("not-authorized".to_owned())
    );
}

#[tokio::test]
async fn registration_can_be_disabled() {
    let server = TestServer::start_with(|c| c.registration.enabled = Some(false)).await;
    let mut c = server.connect_starttls().await;
    assert!(
        c.features
            .as_ref()
            .is_some_and(|f| !f.has_child("register", NS_REGISTER_FEATURE))
    );
    let reply = c.query("set", None, &register_set("newbie", "fresh")).await;
    assert_eq!(stanza_error(&reply).0, "service-unavailable");
    assert_eq!(
        c.auth_plain("newbie", "fresh").await,
        Err("not-authorized".to_owned())
    );
}

#[tokio::test]
async fn password_change_takes_effect_at_next_login() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let form = alice.query("get", None, REGISTER_GET).await;
    assert!(
        form.get_child("query", NS_REGISTER)
            .is_some_and(|q| q.has_child("registered", NS_REGISTER))
    );
    // XEP-0077 §3.3.
    let reply = alice
        .query("set", None, &register_set("alice", "looking-glass"))
        .await;
    assert_result(&reply);
    // The username must be the account's own.
    let reply = alice
        .query("set", None, &register_set("bob", "hijack"))
        .await;
    assert!(stanza_error(&reply).0 == "bad-request" || stanza_error(&reply).0 == "not-allowed");

    let mut c = server.connect_starttls().await;
    assert_eq!(
        c.auth_plain("alice", "wonderland").await,
        Err("not-authorized".to_owned())
    );
    c.auth_scram(Scram::Sha256, "alice", "looking-glass")
        .await
        .expect("new password");
    let mut c = server.connect_starttls().await;
    c.auth_scram(Scram::Sha1, "alice", "looking-glass")
        .await
        .expect("new password, SHA-1 verifier too");
}

#[tokio::test]
async fn account_removal_ends_sessions_and_logins() {
    let server = TestServer::start().await;
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    let mut alice_pc = server.login("alice", "wonderland", "pc").await;

    // XEP-0077 §3.2: the result comes first, then the stream ends.
    alice
        .send("<iq type='set' id='unreg'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let reply = alice
        .recv_where(|el| el.name() == "iq" && el.attr("id") == Some("unreg"))
        .await;
    assert_result(&reply);
    // Every session of the account ends, with `</stream:stream>` after the error.
    assert_eq!(alice.expect_stream_error().await, "not-authorized");
    assert_eq!(alice_pc.expect_stream_error().await, "not-authorized");

    let mut c = server.connect_starttls().await;
    assert_eq!(
        c.auth_plain("alice", "wonderland").await,
        Err("not-authorized".to_owned())
    );
    // The address no longer takes messages.
    bob.send("<message to='alice@localhost' id='gone' type='chat'><body>hi</body></message>")
        .await;
    let err = bob.recv_message().await;
    assert_eq!(err.attr("id"), Some("gone"));
    assert_eq!(stanza_error(&err).0, "service-unavailable");
}

#[tokio::test]
async fn an_iq_without_to_is_answered_for_the_account() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    // RFC 6120 §10.3.3: no `to` means the user's own account, not the server.
    let disco = alice
        .query("get", None, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
        .await;
    let identity = disco
        .get_child("query", NS_DISCO_INFO)
        .and_then(|q| q.get_child("identity", NS_DISCO_INFO))
        .expect("an identity");
    assert_eq!(identity.attr("category"), Some("account"), "{disco:?}");
    // What the account does not answer itself, the server does for it.
    let ping = alice
        .query("get", None, &format!("<ping xmlns='{NS_PING}'/>"))
        .await;
    assert_eq!(ping.attr("type"), Some("result"), "{ping:?}");
    let version = alice
        .query("get", None, &format!("<query xmlns='{NS_VERSION}'/>"))
        .await;
    assert!(
        version.get_child("query", NS_VERSION).is_some(),
        "{version:?}"
    );
}

#[tokio::test]
async fn presence_to_a_domain_nobody_can_reach_is_answered() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    // Joining a room on a server this one cannot reach (federation is off): the client
    // must not wait forever.
    alice
        .send("<presence to='room@conference.elsewhere.example/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let error = alice.recv_where(|el| el.name() == "presence").await;
    assert_eq!(
        error.attr("from"),
        Some("room@conference.elsewhere.example/alice")
    );
    assert_eq!(stanza_error(&error).0, "remote-server-not-found");
    // Unavailable presence is not answered.
    alice
        .send("<presence to='room@conference.elsewhere.example/alice' type='unavailable'/>")
        .await;
    alice.assert_quiet().await;
}
