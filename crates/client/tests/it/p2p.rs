//! Direct links between two clients on loopback: offered through the server, opened with
//! the device keys the accounts published, carrying the conversation while the server
//! is gone; and a device whose key is not the one pinned is refused.

use super::*;
use outpost_client::Path as Route;

impl User {
    async fn path(&mut self, with: &str, path: Route) {
        self.wait_for(
            &format!("the path to {with} to be {path:?}"),
            |e| matches!(e, Event::Path { with: w, path: p } if w == with && *p == path),
        )
        .await;
    }
}

fn identity(dir: &Path) -> Identity {
    Identity::load_or_create(dir).expect("a device key")
}

#[tokio::test]
async fn friends_talk_over_a_direct_link_that_outlives_their_server() {
    let mut server = server_with_users(&["alice", "bob"]).await;
    let servers = [server.starttls.to_string()];
    let (a, b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut alice = User::start_p2p("alice@localhost", &servers, a.path(), identity(a.path()));
    let mut bob = User::start_p2p("bob@localhost", &servers, b.path(), identity(b.path()));
    alice.connected().await;
    bob.connected().await;
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;
    alice.path("bob@localhost", Route::Direct).await;
    bob.path("alice@localhost", Route::Direct).await;

    alice.send("bob@localhost", "just between us", "d1").await;
    let Event::Message { from, path, .. } = bob.message("just between us").await else {
        unreachable!()
    };
    assert_eq!((from.as_str(), path), ("alice@localhost", Route::Direct));
    alice.delivery("d1", DeliveryState::Delivered).await;
    bob.client
        .command(Command::Read {
            to: "alice@localhost".to_owned(),
            id: "d1".to_owned(),
        })
        .await;
    alice.delivery("d1", DeliveryState::Read).await;
    nothing_of_it_at_the_server(&mut alice).await;

    // The server goes away; the link does not.
    server.stop().await;
    bob.wait_for("the disconnection", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    bob.send("alice@localhost", "the server is gone", "d2")
        .await;
    let Event::Message { path, .. } = alice.message("the server is gone").await else {
        unreachable!()
    };
    assert_eq!(path, Route::Direct);
    bob.delivery("d2", DeliveryState::Delivered).await;
}

/// Alice's direct message d1 went through no server: nothing acknowledged it as queued,
/// and the archive never saw it.
async fn nothing_of_it_at_the_server(alice: &mut User) {
    let queued = |e: &Event| matches!(e, Event::Delivery { id, state } if id == "d1" && *state == DeliveryState::Queued);
    assert!(!alice.seen.iter().any(queued), "d1 went through the server");
    alice
        .client
        .command(Command::History {
            with: "bob@localhost".to_owned(),
        })
        .await;
    let Event::History { items, .. } = alice
        .wait_for("the history", |e| matches!(e, Event::History { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(
        items.iter().all(|i| i.body != "just between us"),
        "the server archived a direct message: {items:?}"
    );
}

#[tokio::test]
async fn a_device_showing_another_key_than_the_pinned_one_is_refused() {
    let server = server_with_users(&["alice", "bob"]).await;
    let servers = [server.starttls.to_string()];
    let (a, b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let first = identity(a.path());
    let mut alice = User::start_p2p("alice@localhost", &servers, a.path(), first.clone());
    let mut bob = User::start_p2p("bob@localhost", &servers, b.path(), identity(b.path()));
    alice.connected().await;
    bob.connected().await;
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;
    bob.path("alice@localhost", Route::Direct).await;

    // Alice's device comes back with another key under the same device id (a key
    // copied from elsewhere, or a device that is not hers): Bob's client refuses it.
    alice.client.command(Command::Quit).await;
    bob.path("alice@localhost", Route::Server).await;
    let impostor = first.with_new_key().expect("a new key");
    assert_eq!(impostor.device(), first.device());
    let mut alice = User::start_p2p("alice@localhost", &servers, a.path(), impostor);
    alice.connected().await;
    let Event::Error { text } = bob
        .wait_for(
            "the refusal",
            |e| matches!(e, Event::Error { text } if text.contains("not the one pinned")),
        )
        .await
    else {
        unreachable!()
    };
    assert!(text.contains("alice@localhost"), "{text}");
    assert!(
        text.contains(&first.fingerprint()),
        "names the pinned key: {text}"
    );

    // They still talk, through the server.
    alice
        .send("bob@localhost", "through the server", "s1")
        .await;
    let Event::Message { path, .. } = bob.message("through the server").await else {
        unreachable!()
    };
    assert_eq!(path, Route::Server);
    assert!(
        !bob.seen.iter().any(|e| matches!(
            e,
            Event::Path {
                path: Route::Direct,
                ..
            }
        )),
        "no link was opened with the refused key"
    );
}
