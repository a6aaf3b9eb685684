//! The HTTP API (`/api/v1`) on the real HTTPS listener, with a real HTTP client: accounts
//! and tokens, a REST user and an XMPP user becoming friends and chatting, the event
//! stream (Server-Sent Events) with `Last-Event-ID` and a message that waited while the
//! REST user was away, idempotent sends, the admin routes, and bad input answered with
//! problem details.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use outpost_testkit::*;
use outpost_web::Web;
use serde_json::{Value, json};

use crate::http::{Reply, connect_tls, plain_request, request};

const ADMIN_TOKEN: &str = "an-admin-token-of-at-least-32-characters";

pub(crate) async fn server_with(
    tweak: impl FnOnce(&mut outpost_server::config::Config),
) -> TestServer {
    TestServer::start_with_http(tweak, Arc::new(Web::new())).await
}

/// A call: `body` as JSON when given, `token` as the bearer.
pub(crate) async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let bytes = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
    request(server, method, path, &headers, bytes).await
}

pub(crate) fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )
    })
}

/// Checks that `reply` is the problem `code` with `status`.
pub(crate) fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let p = json_of(reply);
    assert_eq!(p["code"], code, "{p}");
    assert_eq!(p["status"], status, "{p}");
    assert_eq!(p["type"], format!("/api/v1/problems/{code}"), "{p}");
}

pub(crate) async fn login(server: &TestServer, jid: &str, password: &str) -> String {
    let reply = call(
        server,
        "POST",
        "/api/v1/login",
        None,
        Some(json!({"jid": jid, "password": password, "label": "test"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = json_of(&reply);
    assert_eq!(v["jid"], jid);
    v["token"].as_str().expect("a token").to_owned()
}

/// An open event stream.
pub(crate) struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

/// One event: its id, type and data.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) id: u64,
    pub(crate) kind: String,
    pub(crate) data: Value,
}

pub(crate) async fn events(server: &TestServer, token: &str, last_id: Option<u64>) -> Events {
    let tls = connect_tls(server).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .uri("/api/v1/events")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers().get("content-type").expect("a type");
    assert_eq!(kind.to_str().unwrap(), "text/event-stream");
    Events {
        body: response.into_body(),
        buffer: String::new(),
    }
}

impl Events {
    /// The next event (comments skipped), within the test kit's wait.
    pub(crate) async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let (Some(id), Some(kind)) = (id, kind) {
                    let data = serde_json::from_str(&data).expect("JSON data");
                    return Event { id, kind, data };
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .expect("a frame");
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    /// The next event of type `kind`, skipping others.
    pub(crate) async fn next_of(&mut self, kind: &str) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no {kind} event");
            let e = tokio::time::timeout(WAIT, self.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event in time"));
            if e.kind == kind {
                return e;
            }
        }
    }
}

#[tokio::test]
async fn accounts_log_in_get_tokens_and_log_out() {
    let server = server_with(|c| c.registration.enabled = Some(true)).await;
    let new = json!({"username": "alice", "password": "wonderland"});
    let reply = call(&server, "POST", "/api/v1/register", None, Some(new.clone())).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(json_of(&reply)["jid"], "alice@localhost");
    let again = call(&server, "POST", "/api/v1/register", None, Some(new)).await;
    assert_problem(&again, 409, "conflict");

    let wrong = json!({"jid": "alice@localhost", "password": "nope"});
    let reply = call(&server, "POST", "/api/v1/login", None, Some(wrong)).await;
    assert_problem(&reply, 401, "bad-credentials");
    let unknown = json!({"jid": "nobody@localhost", "password": "nope"});
    let reply = call(&server, "POST", "/api/v1/login", None, Some(unknown)).await;
    assert_problem(&reply, 401, "bad-credentials");

    let first = login(&server, "alice@localhost", "wonderland").await;
    let second = login(&server, "alice@localhost", "wonderland").await;
    let me = call(&server, "GET", "/api/v1/me", Some(&first), None).await;
    assert_eq!(json_of(&me)["jid"], "alice@localhost");
    let tokens = json_of(&call(&server, "GET", "/api/v1/tokens", Some(&first), None).await);
    let tokens = tokens.as_array().expect("a list");
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens.iter().filter(|t| t["current"] == true).count(), 1);
    // The list names tokens by id, never by the secret.
    assert!(!tokens.iter().any(|t| t.to_string().contains(&second)));
    let other = tokens.iter().find(|t| t["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/tokens/{other}");
    let reply = call(&server, "DELETE", &path, Some(&first), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_problem(
        &call(&server, "DELETE", &path, Some(&first), None).await,
        404,
        "not-found",
    );
    assert_problem(
        &call(&server, "GET", "/api/v1/me", Some(&second), None).await,
        401,
        "unauthorized",
    );

    logging_out_revokes(&server, &first).await;
}

/// Logging out revokes the token; `?all=true` every token of the account.
async fn logging_out_revokes(server: &TestServer, token: &str) {
    assert_eq!(
        status_of(server, "POST", "/api/v1/logout", token).await,
        204
    );
    let reply = call(server, "GET", "/api/v1/me", Some(token), None).await;
    assert_problem(&reply, 401, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    let a = login(server, "alice@localhost", "wonderland").await;
    let b = login(server, "alice@localhost", "wonderland").await;
    assert_eq!(
        status_of(server, "POST", "/api/v1/logout?all=true", &a).await,
        204
    );
    assert_eq!(status_of(server, "GET", "/api/v1/me", &b).await, 401);
}

#[tokio::test]
async fn a_rest_user_and_an_xmpp_user_become_friends_and_chat() {
    let server = server_with(|_| {}).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let mut stream = events(&server, &token, None).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.roster_get().await;
    bob.available().await;

    befriend(&server, &token, &mut stream, &mut bob).await;

    // Alice goes busy over REST: bob, her friend, sees it.
    let busy = json!({"show": "dnd", "status": "in a meeting"});
    let reply = call(&server, "PUT", "/api/v1/presence", Some(&token), Some(busy)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let seen = bob
        .recv_where(|p| p.name() == "presence" && p.has_child("show", "jabber:client"))
        .await;
    let show = seen.get_child("show", "jabber:client").map(|s| s.text());
    assert_eq!(show.as_deref(), Some("dnd"));

    // Bob writes; the event stream has it, and bob gets the receipt he asked for.
    bob.send(
        "<message to='alice@localhost' type='chat' id='b1'><body>hello from xmpp</body>\
         <request xmlns='urn:xmpp:receipts'/></message>",
    )
    .await;
    let message = stream.next_of("message").await;
    assert_eq!(message.data["body"], "hello from xmpp", "{message:?}");
    assert_eq!(message.data["from"], "bob@localhost/pc");
    let receipt = bob
        .recv_where(|m| m.name() == "message" && m.has_child("received", "urn:xmpp:receipts"))
        .await;
    let received = receipt.get_child("received", "urn:xmpp:receipts");
    assert_eq!(received.and_then(|r| r.attr("id")), Some("b1"));

    // Alice answers over REST: delivered, and bob's receipt comes back as an event.
    let send = json!({"to": "bob@localhost", "body": "hello from rest"});
    let sent = json_of(
        &call(
            &server,
            "POST",
            "/api/v1/messages",
            Some(&token),
            Some(send),
        )
        .await,
    );
    assert_eq!(sent["state"], "delivered", "{sent}");
    let got = bob.recv_message().await;
    let body = got.get_child("body", "jabber:client").map(|b| b.text());
    assert_eq!(body.as_deref(), Some("hello from rest"));
    let id = sent["id"].as_str().unwrap();
    assert_eq!(got.attr("id"), Some(id));
    bob.send(&format!(
        "<message to='{}'><received xmlns='urn:xmpp:receipts' id='{id}'/></message>",
        got.attr("from").unwrap()
    ))
    .await;
    let receipt = stream.next_of("receipt").await;
    assert_eq!(receipt.data["id"], id);

    history_pages_back(&server, &token).await;
}

/// Alice's history with bob holds the two messages of the chat test, oldest first, and
/// pages back one at a time.
async fn history_pages_back(server: &TestServer, token: &str) {
    let page = get(server, "/api/v1/messages?with=bob@localhost", token).await;
    let bodies: Vec<&str> = (page["messages"].as_array().unwrap().iter())
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["hello from xmpp", "hello from rest"]);
    assert_eq!(page["complete"], true);
    let newest = page["messages"][1]["id"].as_str().unwrap();
    let path = format!("/api/v1/messages?with=bob@localhost&before={newest}&limit=1");
    let older = get(server, &path, token).await;
    assert_eq!(older["messages"][0]["body"], "hello from xmpp", "{older}");
    assert_eq!(older["complete"], true);
}

/// Alice (REST, `token`) asks bob (XMPP) to be friends; bob approves and asks back; alice
/// approves; each ends up seeing the other online.
async fn befriend(server: &TestServer, token: &str, stream: &mut Events, bob: &mut Client) {
    let ask = json!({"jid": "bob@localhost"});
    let reply = call(
        server,
        "POST",
        "/api/v1/friends",
        Some(token),
        Some(ask.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(json_of(&reply)["ask"], "subscribe");
    let request = bob
        .recv_where(|p| p.name() == "presence" && p.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(request.attr("from"), Some("alice@localhost"));
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    while stream.next_of("subscription").await.data["type"] != "subscribe" {}
    let requests = get(server, "/api/v1/friends/requests", token).await;
    assert_eq!(requests, json!([{"jid": "bob@localhost"}]));
    let reply = call(server, "POST", "/api/v1/friends", Some(token), Some(ask)).await;
    assert_eq!(json_of(&reply)["subscription"], "both");
    let friends = get(server, "/api/v1/friends", token).await;
    assert_eq!(friends[0]["jid"], "bob@localhost");
    assert_eq!(friends[0]["subscription"], "both");
    // Bob is online, and alice's REST session has told bob she is.
    let alice = format!("alice@localhost/{}", resource_of(server, token).await);
    bob.recv_presence_from(&alice).await;
    // Bob's presence came while the test read other events: the friend list shows it.
    poll_until(tokio::time::Instant::now() + WAIT, || async {
        let friends = get(server, "/api/v1/friends", token).await;
        match friends[0]["presence"].as_str() {
            Some("available") => Ok(()),
            other => Err(format!("bob is {other:?}")),
        }
    })
    .await;
}

/// The status of a call with no body.
async fn status_of(server: &TestServer, method: &str, path: &str, token: &str) -> u16 {
    call(server, method, path, Some(token), None)
        .await
        .status
        .as_u16()
}

/// A GET's JSON answer.
pub(crate) async fn get(server: &TestServer, path: &str, token: &str) -> Value {
    let reply = call(server, "GET", path, Some(token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}");
    json_of(&reply)
}

/// The resource of a token's session.
async fn resource_of(server: &TestServer, token: &str) -> String {
    let me = json_of(&call(server, "GET", "/api/v1/me", Some(token), None).await);
    me["resource"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rest_user_away_misses_nothing() {
    let server = server_with(|c| c.api.session_idle_secs = 1).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let mut bob = server.login("bob", "builder", "pc").await;

    // While the session lives, a reconnect with Last-Event-ID gets what came after it.
    let mut stream = events(&server, &token, None).await;
    bob.send("<message to='alice@localhost' type='chat'><body>one</body></message>")
        .await;
    let one = stream.next_of("message").await;
    drop(stream);
    bob.send("<message to='alice@localhost' type='chat'><body>two</body></message>")
        .await;
    bob.barrier().await;
    let mut stream = events(&server, &token, Some(one.id)).await;
    let two = stream.next_of("message").await;
    assert_eq!(two.data["body"], "two");
    assert!(two.id > one.id);
    drop(stream);

    // With no stream and no call, the session goes offline; a message waits for it.
    let resource = resource_of(&server, &token).await;
    let jid = format!("alice@localhost/{resource}");
    poll_until(tokio::time::Instant::now() + WAIT, || {
        let online = (server.handle.as_ref().unwrap().sessions().iter()).any(|s| s.jid == jid);
        async move {
            if online {
                Err("still online".to_owned())
            } else {
                Ok(())
            }
        }
    })
    .await;
    let send = json!({"to": "alice@localhost", "body": "while you were away"});
    let bob_token = login(&server, "bob@localhost", "builder").await;
    let reply = call(
        &server,
        "POST",
        "/api/v1/messages",
        Some(&bob_token),
        Some(send),
    )
    .await;
    assert_eq!(json_of(&reply)["state"], "stored");
    let mut stream = events(&server, &token, Some(two.id)).await;
    let waited = stream.next_of("message").await;
    assert_eq!(waited.data["body"], "while you were away");
    assert_eq!(
        waited.data["from"].as_str().unwrap().split('/').next(),
        Some("bob@localhost")
    );
}

#[tokio::test]
async fn a_repeated_idempotency_key_sends_once() {
    let server = server_with(|_| {}).await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.available().await;
    let auth = format!("Bearer {token}");
    let body = json!({"to": "bob@localhost", "body": "just once"}).to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("idempotency-key", "k-1"),
    ];
    let first = request(
        &server,
        "POST",
        "/api/v1/messages",
        &headers,
        body.clone().into(),
    )
    .await;
    let again = request(&server, "POST", "/api/v1/messages", &headers, body.into()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(json_of(&first), json_of(&again));
    let got = bob.recv_message().await;
    assert_eq!(
        got.get_child("body", "jabber:client").unwrap().text(),
        "just once"
    );
    bob.assert_none_before_ping(|m| m.name() == "message", "a second copy")
        .await;
}

/// Bad requests and the problems they get: method, path, with the user's token, the JSON
/// body (none when empty), status, code.
#[rustfmt::skip]
const BAD: &[(&str, &str, bool, &str, u16, &str)] = &[
    ("POST", "/api/v1/login", false, "[1,", 400, "bad-request"),
    ("POST", "/api/v1/login", false, r#"{"jid": "x"}"#, 400, "bad-request"),
    ("GET", "/api/v1/nothing", false, "", 404, "not-found"),
    ("PATCH", "/api/v1/friends", true, "", 405, "method-not-allowed"),
    ("GET", "/api/v1/friends", false, "", 401, "unauthorized"),
    ("POST", "/api/v1/register", false, r#"{"username": "eve", "password": "pw"}"#, 403, "registration-closed"),
    ("POST", "/api/v1/messages", true, r#"{"to": "not a jid@", "body": "x"}"#, 400, "bad-request"),
    ("POST", "/api/v1/messages", true, r#"{"to": "bob@localhost", "body": "  "}"#, 400, "bad-request"),
    // Characters XML cannot carry are refused, not sent.
    ("POST", "/api/v1/messages", true, r#"{"to": "alice@localhost", "body": "bell \u0007"}"#, 400, "bad-request"),
    ("PUT", "/api/v1/presence", true, r#"{"show": "xa", "status": "\u0008"}"#, 400, "bad-request"),
    ("PUT", "/api/v1/presence", true, r#"{"show": "sleepy"}"#, 400, "bad-request"),
    ("POST", "/api/v1/messages", true, r#"{"to": "nobody@localhost", "body": "hi"}"#, 404, "not-found"),
    ("GET", "/api/v1/messages?with=bob@localhost&limit=1000", true, "", 400, "bad-request"),
    ("GET", "/api/v1/messages?with=bob@localhost&before=zzz", true, "", 400, "bad-request"),
];

#[tokio::test]
async fn bad_requests_get_problem_details() {
    let server = server_with(|c| c.registration.enabled = Some(false)).await;
    server.add_user("alice", "wonderland").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let auth = format!("Bearer {token}");
    for &(method, path, with_token, body, status, code) in BAD {
        let mut headers = vec![("content-type", "application/json")];
        if with_token {
            headers.push(("authorization", auth.as_str()));
        }
        let reply = request(&server, method, path, &headers, body.into()).await;
        assert_problem(&reply, status, code);
    }
    let untyped = request(&server, "POST", "/api/v1/login", &[], b"{}".to_vec()).await;
    assert_problem(&untyped, 415, "unsupported-media-type");
    let json_type = [("content-type", "application/json")];
    let huge = vec![b' '; 200 * 1024];
    let reply = request(&server, "POST", "/api/v1/login", &json_type, huge).await;
    assert_problem(&reply, 413, "payload-too-large");
    let forged = call(&server, "GET", "/api/v1/friends", Some("opt_forged"), None).await;
    assert_problem(&forged, 401, "unauthorized");
    let key = [
        ("authorization", auth.as_str()),
        json_type[0],
        ("idempotency-key", ""),
    ];
    let body = json!({"to": "bob@localhost", "body": "x"})
        .to_string()
        .into_bytes();
    let reply = request(&server, "POST", "/api/v1/messages", &key, body).await;
    assert_problem(&reply, 400, "bad-request");
    // The session that got all of that still works.
    let friends = call(&server, "GET", "/api/v1/friends", Some(&token), None).await;
    assert_eq!(friends.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_passwords_are_throttled_and_harm_nobody_else() {
    let server = server_with(|_| {}).await;
    server.add_user("alice", "wonderland").await;
    let token = login(&server, "alice@localhost", "wonderland").await;
    let mut throttled = None;
    for _ in 0..20 {
        let wrong = json!({"jid": "alice@localhost", "password": "guess"});
        let reply = call(&server, "POST", "/api/v1/login", None, Some(wrong)).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(reply);
            break;
        }
        assert_problem(&reply, 401, "bad-credentials");
    }
    let throttled = throttled.expect("throttled within 20 failures");
    assert_problem(&throttled, 429, "rate-limited");
    assert!(throttled.header("retry-after").is_some());
    // Alice's token still works: the flood harmed nobody's session.
    let me = call(&server, "GET", "/api/v1/me", Some(&token), None).await;
    assert_eq!(me.status, StatusCode::OK);
}

#[tokio::test]
async fn removing_a_friend_and_refusing_a_request() {
    let server = server_with(|_| {}).await;
    for (u, p) in [
        ("alice", "wonderland"),
        ("bob", "builder"),
        ("carol", "singer"),
    ] {
        server.add_user(u, p).await;
    }
    let token = login(&server, "alice@localhost", "wonderland").await;
    let mut stream = events(&server, &token, None).await;
    let mut carol = server.login("carol", "singer", "pc").await;
    carol.roster_get().await;
    carol.available().await;
    carol
        .send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    stream.next_of("subscription").await;
    let path = "/api/v1/friends/carol%40localhost";
    assert_eq!(status_of(&server, "DELETE", path, &token).await, 204);
    let refused = carol
        .recv_where(|p| p.name() == "presence" && p.attr("type") == Some("unsubscribed"))
        .await;
    assert_eq!(refused.attr("from"), Some("alice@localhost"));
    let requests = get(&server, "/api/v1/friends/requests", &token).await;
    assert_eq!(requests, json!([]));

    let ask = json!({"jid": "bob@localhost", "name": "Bob"});
    call(&server, "POST", "/api/v1/friends", Some(&token), Some(ask)).await;
    let friends = get(&server, "/api/v1/friends", &token).await;
    assert_eq!(friends[0]["name"], "Bob");
    let path = "/api/v1/friends/bob@localhost";
    assert_eq!(status_of(&server, "DELETE", path, &token).await, 204);
    let friends = get(&server, "/api/v1/friends", &token).await;
    assert_eq!(friends, json!([]));
    let removed = stream.next_of("roster").await;
    assert_eq!(removed.data["jid"], "bob@localhost");
    assert_problem(
        &call(&server, "DELETE", path, Some(&token), None).await,
        404,
        "not-found",
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let off = server_with(|_| {}).await;
    assert_problem(
        &call(&off, "GET", "/api/v1/admin/users", Some(ADMIN_TOKEN), None).await,
        403,
        "forbidden",
    );
    let server = server_with(|c| c.api.admin_token = Some(ADMIN_TOKEN.to_owned())).await;
    server.add_user("alice", "wonderland").await;
    let alice = login(&server, "alice@localhost", "wonderland").await;
    // A user's token is not the admin's.
    assert_problem(
        &call(&server, "GET", "/api/v1/admin/users", Some(&alice), None).await,
        401,
        "unauthorized",
    );
    let new = json!({"jid": "dave@localhost", "password": "diver"});
    let made = call(
        &server,
        "POST",
        "/api/v1/admin/users",
        Some(ADMIN_TOKEN),
        Some(new),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED);
    let users = get(&server, "/api/v1/admin/users", ADMIN_TOKEN).await;
    assert_eq!(
        users,
        json!([{"jid": "alice@localhost"}, {"jid": "dave@localhost"}])
    );
    let status = get(&server, "/api/v1/admin/status", ADMIN_TOKEN).await;
    assert_eq!(status["domains"], json!(["localhost"]));
    // No federation links yet, and no hub to replicate to.
    assert_eq!(
        get(&server, "/api/v1/admin/links", ADMIN_TOKEN).await,
        json!([])
    );
    let replication = get(&server, "/api/v1/admin/replication", ADMIN_TOKEN).await;
    assert_eq!(replication, Value::Null);
    let path = "/api/v1/admin/users/alice@localhost";
    assert_eq!(status_of(&server, "DELETE", path, ADMIN_TOKEN).await, 204);
    // The account's tokens went with it.
    assert_problem(
        &call(&server, "GET", "/api/v1/me", Some(&alice), None).await,
        401,
        "unauthorized",
    );
}

#[tokio::test]
async fn the_api_describes_itself() {
    let server = server_with(|_| {}).await;
    let doc = call(&server, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = json_of(&doc);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/login",
        "/api/v1/friends",
        "/api/v1/messages",
        "/api/v1/events",
        "/api/v1/rooms",
        "/api/v1/rooms/{jid}/messages",
        "/api/v1/uploads",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let page = call(&server, "GET", "/api/v1/docs", None, None).await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        !String::from_utf8_lossy(&page.body).contains("https://"),
        "no CDN"
    );
}

#[tokio::test]
async fn the_web_client_is_served_from_the_binary() {
    let server = server_with(|_| {}).await;
    let page = call(&server, "GET", "/", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&page.body).into_owned();
    assert!(html.contains("/assets/app.js"), "{html}");
    assert!(
        !html.contains("https://"),
        "nothing from the Internet: {html}"
    );
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let reply = call(&server, "GET", &format!("{path}?v=1"), None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(reply.header("content-type").unwrap().starts_with(kind));
        assert!(reply.body.len() > 1000, "{path} is the bundle");
    }
}

#[tokio::test]
async fn plain_http_serves_the_same() {
    let server = server_with(|_| {}).await;
    server.add_user("alice", "wonderland").await;
    let health = plain_request(&server, "GET", "/healthz", &[], Vec::new()).await;
    assert_eq!(health.status, StatusCode::OK);
    let login = json!({"jid": "alice@localhost", "password": "wonderland"});
    let headers = [("content-type", "application/json")];
    let reply = plain_request(
        &server,
        "POST",
        "/api/v1/login",
        &headers,
        login.to_string().into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let token = json_of(&reply)["token"].as_str().unwrap().to_owned();
    // The token works on either listener.
    let me = call(&server, "GET", "/api/v1/me", Some(&token), None).await;
    assert_eq!(json_of(&me)["jid"], "alice@localhost");
}
