//! Client sessions over real sockets: login, routing, presence, offline storage, limits.

mod common;

use common::TestServer;

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
