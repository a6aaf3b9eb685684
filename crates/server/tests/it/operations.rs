//! What an operator relies on: failed-login throttling that spares the neighbours, stream
//! errors that reach clients sending too much, sessions that end when their account
//! changes, kicking, and reloading without dropping sessions.

use outpost_server::AccountChange;
use outpost_testkit::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Behind one address (an office NAT), one user mistyping their password a dozen times
/// locks out that user there, nobody else; `unblock` lets them in at once.
#[tokio::test]
async fn one_user_mistyping_does_not_lock_out_the_office() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    for _ in 0..12 {
        let mut c = server.connect_starttls().await;
        let failed = c.auth_plain("alice", "guess").await;
        assert!(failed.is_err(), "{failed:?}");
    }
    let mut c = server.connect_starttls().await;
    assert_eq!(
        c.auth_plain("alice", "wonderland").await,
        Err("temporary-auth-failure".to_owned()),
        "alice waits from this address"
    );
    // Colleagues behind the same address log in as usual.
    let mut bob = server.login("bob", "builder", "pc").await;
    bob.assert_quiet().await;
    let handle = server.handle.as_ref().expect("running");
    assert!(handle.unblock(Some("alice@localhost"), None) > 0);
    let mut alice = server.login("alice", "wonderland", "pc").await;
    alice.assert_quiet().await;
}

/// Thirty clients that each write 2 MiB in 64 KiB writes without waiting all get the
/// `policy-violation` stream error, and none is reset: the server closes with a lingering
/// close, reading what they still send, instead of letting the kernel answer unread data
/// with a reset, which fails the client's writes and, on many systems, discards the error
/// before the client reads it.
#[tokio::test]
async fn every_oversized_sender_sees_why_it_was_closed() {
    let server = TestServer::start().await;
    let addr = server.direct_tls;
    let connector = server.tls_connector();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let connector = connector.clone();
        senders.spawn(async move {
            // Small buffers, as across a real network: the writes block once the server
            // stops reading, long before the 2 MiB are out.
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_send_buffer_size(64 * 1024).expect("sndbuf");
            let tcp = socket.connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("TLS");
            // Everything first, then read the answer, as a client that sends a large file
            // in one stanza would.
            let chunk = vec![b'a'; 64 * 1024];
            let mut reset = tls
                .write_all(stream_open("localhost").as_bytes())
                .await
                .is_err();
            reset |= tls.write_all(b"<message><body>").await.is_err();
            for _ in 0..32 {
                if reset {
                    break;
                }
                reset |= tls.write_all(&chunk).await.is_err();
            }
            reset |= tls.flush().await.is_err();
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            // A reset would have cut the writes short (and, on many systems, discarded the
            // error before the client read it).
            !reset && String::from_utf8_lossy(&seen).contains("<policy-violation")
        });
    }
    let mut told = 0;
    while let Some(result) = senders.join_next().await {
        told += usize::from(result.expect("sender"));
    }
    assert_eq!(
        told, 30,
        "clients that wrote everything and then read the error"
    );
    // And the server goes on serving.
    server.add_user("alice", "wonderland").await;
    server
        .login("alice", "wonderland", "pc")
        .await
        .assert_quiet()
        .await;
}

/// An account changed elsewhere (`outpost user remove` or `passwd`): its sessions end with
/// `not-authorized` (RFC 6120 §4.9.3.12), and messages for a removed account bounce.
#[tokio::test]
async fn changing_an_account_ends_its_sessions() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let handle = server.handle.as_ref().expect("running");
    let mut phone = server.login("alice", "wonderland", "phone").await;
    let mut laptop = server.login("alice", "wonderland", "laptop").await;
    let mut bob = server.login("bob", "builder", "pc").await;

    outpost_server::accounts::set_password(server.store.as_ref(), "alice@localhost", "new", 4096)
        .await
        .expect("passwd");
    let ended = handle
        .account_changed("alice@localhost", AccountChange::PasswordChanged)
        .expect("jid");
    assert_eq!(ended, 2);
    assert_eq!(phone.expect_stream_error().await, "not-authorized");
    assert_eq!(laptop.expect_stream_error().await, "not-authorized");
    let mut again = server.login("alice", "new", "phone").await;

    outpost_server::accounts::remove_user(server.store.as_ref(), "alice@localhost")
        .await
        .expect("remove");
    handle
        .account_changed("alice@localhost", AccountChange::Removed)
        .expect("jid");
    assert_eq!(again.expect_stream_error().await, "not-authorized");
    bob.send("<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let error = bob.recv_message().await;
    assert_eq!(stanza_error(&error).0, "service-unavailable");
    assert!(
        handle
            .sessions()
            .iter()
            .all(|s| !s.jid.starts_with("alice@"))
    );
}

/// XEP-0077 §3.3: a password changed in band ends the account's other sessions, not the
/// one that changed it.
#[tokio::test]
async fn a_password_changed_in_band_ends_the_other_sessions() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let mut phone = server.login("alice", "wonderland", "phone").await;
    let mut laptop = server.login("alice", "wonderland", "laptop").await;
    let reply = laptop
        .query(
            "set",
            None,
            "<query xmlns='jabber:iq:register'><username>alice</username>\
             <password>new</password></query>",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert_eq!(phone.expect_stream_error().await, "not-authorized");
    laptop.assert_quiet().await;
}

/// An operator disconnects one resource or a whole account.
#[tokio::test]
async fn kicking_ends_the_named_sessions_only() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    let handle = server.handle.as_ref().expect("running");
    let mut phone = server.login("alice", "wonderland", "phone").await;
    let mut laptop = server.login("alice", "wonderland", "laptop").await;
    let listed: Vec<String> = handle.sessions().into_iter().map(|s| s.jid).collect();
    assert_eq!(listed, ["alice@localhost/laptop", "alice@localhost/phone"]);
    assert_eq!(handle.kick("alice@localhost/phone").expect("jid"), 1);
    assert_eq!(phone.expect_stream_error().await, "policy-violation");
    laptop.assert_quiet().await;
    assert_eq!(handle.kick("alice@localhost").expect("jid"), 1);
    assert_eq!(laptop.expect_stream_error().await, "policy-violation");
    assert!(handle.kick("not a jid@@").is_err());
}

/// A reload applies new domains and limits to new connections, keeps sessions on domains
/// still served, and ends those on a domain no longer served with `host-gone`.
#[tokio::test]
async fn a_reload_keeps_sessions_and_applies_domains() {
    let mut server =
        TestServer::start_with(|c| c.domains = vec!["a.test".into(), "b.test".into()]).await;
    server.add_user("alice", "wonderland").await;
    outpost_server::accounts::add_user(server.store.as_ref(), "bob@b.test", "builder", 4096)
        .await
        .expect("bob");
    let mut alice = server.login("alice", "wonderland", "pc").await;
    let mut bob = server.connect_tcp().await;
    bob.domain = "b.test".to_owned();
    bob.open().await;
    bob.features = Some(bob.recv().await);
    bob.starttls(&server.tls_connector()).await;
    bob.login_plain("bob", "builder", "pc").await;
    let mut config = server.config.clone();
    config.domains = vec!["a.test".into()];
    config.limits.max_resources_per_account = 1;
    let identity = server.identity.clone();
    let report = server
        .handle
        .as_ref()
        .expect("running")
        .reload(config.clone(), &identity)
        .expect("reload");
    assert_eq!(report.domains_removed, ["b.test"]);
    assert_eq!(report.sessions_ended, 1);
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert_eq!(bob.expect_stream_error().await, "host-gone");
    alice.assert_quiet().await;
    // A new stream to b.test is refused now; a second resource for alice too.
    let mut refused = server.connect_tcp().await;
    refused.domain = "b.test".to_owned();
    refused.send(&stream_open("b.test")).await;
    assert_eq!(
        refused.expect_close().await.as_deref(),
        Some("host-unknown")
    );
    let mut second = server.connect_starttls().await;
    second
        .auth_plain("alice", "wonderland")
        .await
        .expect("auth");
    let error = second
        .try_bind(Some("phone"))
        .await
        .expect_err("one resource");
    assert_eq!(stanza_error(&error).0, "resource-constraint");

    // Listener and service changes are reported, not applied.
    config.listen.c2s = vec!["127.0.0.1:1".parse().expect("addr")];
    config.upload.max_file_bytes = 1;
    let report = server
        .handle
        .as_ref()
        .expect("running")
        .reload(config, &identity)
        .expect("reload");
    assert_eq!(report.needs_restart, ["listen", "upload"]);
    alice.assert_quiet().await;
    server.stop().await;
}
