//! File transfer from the receiving side, with the sender played by a raw XMPP client: a
//! sender that gives up ends the transfer at the receiver too.

use super::*;
use outpost_client::TransferState;

const JINGLE: &str = "urn:xmpp:jingle:1";
const FT: &str = "urn:xmpp:jingle:apps:file-transfer:5";

/// Bob adds Alice to his roster (she approves): he takes files from her.
async fn takes_files_from(bob: &mut User, alice: &mut outpost_testkit::Client) {
    alice.available().await;
    bob.client
        .command(Command::Add {
            jid: "alice@localhost".to_owned(),
        })
        .await;
    alice
        .recv_where(|el| el.name() == "presence" && el.attr("type") == Some("subscribe"))
        .await;
    alice
        .send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    bob.wait_for("alice in the roster", |e| {
        matches!(e, Event::Roster { items } if items.iter().any(|i| i.jid == "alice@localhost"))
    })
    .await;
}

/// Alice offers Bob a file she cannot send him directly (no candidates): his client goes
/// to wait at the server's proxy for her; she ends the session instead (her proxy
/// connection failed). His transfer fails with her reason, rather than waiting on.
#[tokio::test]
async fn a_transfer_the_sender_ends_fails_at_the_receiver() {
    let server = server_with_users(&["alice", "bob"]).await;
    let servers = [server.starttls.to_string()];
    let dir = tempfile::tempdir().expect("dir");
    let mut config = User::config("bob@localhost", &servers, None, dir.path());
    config.downloads = Some(dir.path().join("files"));
    let mut bob = User::start_config(config);
    let connected = bob
        .wait_for("connected", |e| matches!(e, Event::Connected { .. }))
        .await;
    let Event::Connected { jid: bob_full, .. } = connected else {
        unreachable!()
    };
    let mut alice = server.login("alice", PASSWORD, "desk").await;
    takes_files_from(&mut bob, &mut alice).await;

    let offer = format!(
        "<jingle xmlns='{JINGLE}' action='session-initiate' initiator='{}' sid='s1'>\
         <content creator='initiator' name='file'><description xmlns='{FT}'><file>\
         <name>notes.txt</name><size>1000</size></file></description>\
         <transport xmlns='urn:outpost:p2p:0'/></content></jingle>",
        alice.jid
    );
    let answer = alice.query("set", Some(&bob_full), &offer).await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    bob.wait_for(
        "the offer",
        |e| matches!(e, Event::Transfer { id, state: TransferState::Receiving, .. } if id == "s1"),
    )
    .await;
    let end = format!(
        "<jingle xmlns='{JINGLE}' action='session-terminate' sid='s1'>\
         <reason><failed-transport/></reason></jingle>"
    );
    let answer = alice.query("set", Some(&bob_full), &end).await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    let failed = bob
        .wait_for(
            "the transfer to fail",
            |e| matches!(e, Event::Transfer { id, state: TransferState::Failed, .. } if id == "s1"),
        )
        .await;
    let Event::Transfer { text, .. } = failed else {
        unreachable!()
    };
    assert_eq!(
        text.as_deref(),
        Some("the sender ended the transfer: failed-transport")
    );
}
