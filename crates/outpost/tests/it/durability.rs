//! Durability of accepted messages across `kill -9`: messages are acknowledged (a ping
//! answered after them proves the server has handled them), the server is killed with
//! SIGKILL, restarted on the same data directory, and the recipient gets every message: an
//! offline recipient from the offline store, exactly once and in order; an online recipient
//! whose client had stopped reading from the offline store (what overflowed its session)
//! and the archive (what was still in the server's memory for it). Rooms (XEP-0045) and
//! personal eventing items (XEP-0163) acknowledged before the kill are there after it.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::collections::{BTreeMap, BTreeSet};

use outpost_proto::minidom::Element;
use outpost_testkit::blocking::Client;
use outpost_testkit::{NS_CLIENT, NS_DELAY, NS_DISCO_INFO, NS_RSM, body, stanza_error};

use super::common::{any_error, bodies, has_body, login, register};

/// Starts `outpost serve` on a loopback port picked by the OS and returns it with the
/// STARTTLS listener's address (plaintext authentication is allowed in this config, so the
/// test client needs no TLS).
fn serve(dir: &Path) -> (Child, SocketAddr) {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = []\nproxy65 = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\nhttp = []\n\
             [registration]\nenabled = true\n[auth]\nallow_plaintext_without_tls = true\n\
             scram_iterations = 4096\n",
            dir.join("data")
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("OUTPOST_")) {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start outpost");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .strip_prefix("listening c2s-starttls ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address");
    (child, addr)
}

#[test]
fn messages_accepted_before_kill_9_are_delivered_once_in_order_after_restart() {
    const COUNT: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());

    // Bob exists but is offline.
    register(addr, "localhost", "bob");
    drop(login(addr, "localhost", "bob"));
    register(addr, "localhost", "alice");
    let mut alice = login(addr, "localhost", "alice");
    for i in 0..COUNT {
        alice.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>message {i}</body></message>"
        ));
    }
    // The session handles stanzas in order: once the ping is answered, every message before
    // it has been accepted, which for an offline user means committed.
    let before = alice.barrier();
    assert!(!any_error(&before), "a message was refused: {before:?}");

    server.kill().expect("kill -9");
    server.wait().expect("reap");

    let (mut server, addr) = serve(dir.path());
    let mut bob = login(addr, "localhost", "bob");
    bob.send("<presence/>");
    let got = bob.recv_until(|el| has_body(el, &format!("message {}", COUNT - 1)));
    assert_eq!(
        bodies(&got),
        (0..COUNT).collect::<Vec<_>>(),
        "all, once, in order"
    );
    assert!(
        got.iter()
            .filter(|el| el.name() == "message")
            .all(|el| el.has_child("delay", NS_DELAY)),
        "offline messages carry a delay stamp: {got:?}"
    );

    // Delivered means gone: a second login gets nothing more.
    bob.send("<presence type='unavailable'/></stream:stream>");
    drop(bob);
    let mut again = login(addr, "localhost", "bob");
    again.send("<presence/>");
    let tail = again.barrier();
    assert!(
        tail.iter().all(|el| body(el).is_none()),
        "redelivered after a completed delivery: {tail:?}"
    );

    server.kill().expect("kill");
    server.wait().expect("reap");
}

/// What the issue measured from outside before the archive made acceptance durable: bob is
/// online but his client has stopped reading; alice sends 3,000 messages, a ping answered
/// after every 50; the server is killed and restarted; bob logs in again. Every message
/// must come back to him, from the offline store or from his archive.
#[test]
fn messages_for_a_client_that_stopped_reading_survive_kill_9() {
    const COUNT: usize = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());
    register(addr, "localhost", "bob");
    register(addr, "localhost", "alice");
    let mut bob = login(addr, "localhost", "bob");
    bob.send("<presence/>");
    bob.barrier();
    // From here on bob reads nothing: his socket's buffers fill and his session holds the
    // rest in memory.
    let mut alice = login(addr, "localhost", "alice");
    for chunk in 0..COUNT / 50 {
        for i in chunk * 50..(chunk + 1) * 50 {
            alice.send(&format!(
                "<message to='bob@localhost' type='chat' id='m{i}'><body>message {i}</body></message>"
            ));
        }
        let before = alice.barrier();
        assert!(!any_error(&before), "a message was refused: {before:?}");
    }
    server.kill().expect("kill -9");
    server.wait().expect("reap");
    drop(bob);

    let (mut server, addr) = serve(dir.path());
    let mut bob = login(addr, "localhost", "bob");
    bob.send("<presence/>");
    let offline = bodies(&bob.barrier());
    let mut archived = Vec::new();
    let mut after = String::new();
    loop {
        let (page, fin) = bob.run(async |c| {
            c.mam(
                None,
                &format!("<set xmlns='{NS_RSM}'><max>250</max>{after}</set>"),
            )
            .await
        });
        archived.extend(bodies(
            &page.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        ));
        let fin = fin.get_child("fin", "urn:xmpp:mam:2").expect("fin").clone();
        if fin.attr("complete") == Some("true") {
            break;
        }
        let last = fin
            .get_child("set", NS_RSM)
            .and_then(|s| s.get_child("last", NS_RSM))
            .expect("last")
            .text();
        after = format!("<after>{last}</after>");
    }
    assert_eq!(
        archived,
        (0..COUNT).collect::<Vec<_>>(),
        "the archive has all, in order"
    );
    let got: BTreeSet<usize> = offline.iter().chain(&archived).copied().collect();
    assert_eq!(got.len(), COUNT, "every accepted message came back");
    eprintln!(
        "{} of {COUNT} came back from the offline store, all {} from the archive",
        offline.len(),
        archived.len()
    );
    server.kill().expect("kill");
    server.wait().expect("reap");
}

const ROOM: &str = "kept@conference.localhost";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_DATA: &str = "jabber:x:data";
const NODE: &str = "urn:example:durable";
const NICK: &str = "http://jabber.org/protocol/nick";

/// Sends an IQ and returns its answer.
fn iq(c: &mut Client, ty: &str, to: Option<&str>, payload: &str) -> Element {
    c.run(async |c| c.query(ty, to, payload).await)
}

/// Sends an IQ that must succeed.
fn iq_ok(c: &mut Client, ty: &str, to: Option<&str>, payload: &str) -> Element {
    let reply = iq(c, ty, to, payload);
    assert_eq!(reply.attr("type"), Some("result"), "{payload}: {reply:?}");
    reply
}

/// Sends `<presence/>` to join the room as `nick` and reads up to the subject, which ends
/// a join (XEP-0045 "Room Subject"), or the error that refuses it. For a new room (no history).
fn enter(c: &mut Client, nick: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{NS_MUC}'/></presence>"
    ));
    c.recv_until(|el| el.has_child("subject", NS_CLIENT) || el.attr("type") == Some("error"))
}

/// Joins the room as `nick` and says something: the room handles one stanza at a time, so
/// its reflection follows everything the join sent. Returns what came, the reflection
/// included.
fn enter_and_speak(c: &mut Client, nick: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{NS_MUC}'/></presence>"
    ));
    let text = format!("{nick} is here");
    c.send(&format!(
        "<message to='{ROOM}' type='groupchat'><body>{text}</body></message>"
    ));
    c.recv_until(|el| el.attr("type") == Some("error") || body(el).as_deref() == Some(&text))
}

/// Alice says something in the room (`payload`: a body or a subject) and reads up to its
/// reflection.
fn groupchat(c: &mut Client, payload: &str) -> Element {
    c.send(&format!(
        "<message to='{ROOM}' type='groupchat'>{payload}</message>"
    ));
    let from = format!("{ROOM}/alice");
    c.recv_until(|el| el.attr("type") == Some("groupchat") && el.attr("from") == Some(&from))
        .pop()
        .expect("the room's reflection")
}

/// The values of a data form's fields, by name.
fn form_values(form: &Element) -> BTreeMap<String, String> {
    form.children()
        .filter(|f| f.is("field", NS_DATA))
        .filter_map(|f| {
            let value = f.get_child("value", NS_DATA).map(Element::text)?;
            Some((f.attr("var")?.to_owned(), value))
        })
        .collect()
}

/// The configuration of the room as its owner reads it (XEP-0045 §10.2).
fn room_config(alice: &mut Client) -> BTreeMap<String, String> {
    let reply = iq_ok(
        alice,
        "get",
        Some(ROOM),
        &format!("<query xmlns='{NS_MUC_OWNER}'/>"),
    );
    let form = reply
        .get_child("query", NS_MUC_OWNER)
        .and_then(|q| q.get_child("x", NS_DATA))
        .expect("a configuration form");
    form_values(form)
}

/// The bare JIDs with `affiliation` in the room.
fn affiliated(alice: &mut Client, affiliation: &str) -> Vec<String> {
    let reply = iq_ok(
        alice,
        "get",
        Some(ROOM),
        &format!("<query xmlns='{NS_MUC_ADMIN}'><item affiliation='{affiliation}'/></query>"),
    );
    reply
        .get_child("query", NS_MUC_ADMIN)
        .map(|q| {
            q.children()
                .filter_map(|i| i.attr("jid").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Alice creates a persistent, members-only, named room with bob as a member, a subject
/// and a message.
fn make_room(alice: &mut Client) {
    let created = enter(alice, "alice");
    assert!(
        created.iter().any(|el| el
            .get_child("x", NS_MUC_USER)
            .is_some_and(|x| x.children().any(|s| s.attr("code") == Some("201")))),
        "the room was created: {created:?}"
    );
    let field = |var: &str, value: &str| {
        format!("<field var='muc#roomconfig_{var}'><value>{value}</value></field>")
    };
    iq_ok(
        alice,
        "set",
        Some(ROOM),
        &format!(
            "<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'>{}{}{}</x></query>",
            field("persistentroom", "1"),
            field("membersonly", "1"),
            field("roomname", "Kept")
        ),
    );
    iq_ok(
        alice,
        "set",
        Some(ROOM),
        &format!(
            "<query xmlns='{NS_MUC_ADMIN}'><item jid='bob@localhost' affiliation='member'/></query>"
        ),
    );
    groupchat(alice, "<subject>kept subject</subject>");
    groupchat(alice, "<body>said before the kill</body>");
}

/// Alice publishes two items to an open node that keeps five (publish-options), and her
/// nick to a node with the default (presence) access.
fn publish(alice: &mut Client) {
    let options = format!(
        "<publish-options><x xmlns='{NS_DATA}' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#publish-options</value></field>\
         <field var='pubsub#access_model'><value>open</value></field>\
         <field var='pubsub#max_items'><value>5</value></field></x></publish-options>"
    );
    for id in ["one", "two"] {
        iq_ok(
            alice,
            "set",
            None,
            &format!(
                "<pubsub xmlns='{NS_PUBSUB}'><publish node='{NODE}'><item id='{id}'>\
                 <entry xmlns='urn:example'>{id}</entry></item></publish>{options}</pubsub>"
            ),
        );
    }
    iq_ok(
        alice,
        "set",
        None,
        &format!(
            "<pubsub xmlns='{NS_PUBSUB}'><publish node='{NICK}'><item id='current'>\
             <nick xmlns='{NICK}'>Ally</nick></item></publish></pubsub>"
        ),
    );
}

/// The ids and texts of the items of alice's `node` as `reader` reads them.
fn items(reader: &mut Client, node: &str) -> Element {
    iq(
        reader,
        "get",
        Some("alice@localhost"),
        &format!("<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>"),
    )
}

fn item_texts(reply: &Element) -> Vec<(String, String)> {
    reply
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("items", NS_PUBSUB))
        .map(|items| {
            items
                .children()
                .map(|i| {
                    let id = i.attr("id").unwrap_or_default().to_owned();
                    let text = i.children().next().map(Element::text).unwrap_or_default();
                    (id, text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The node's configuration as its owner reads it (XEP-0060 §8.2).
fn node_config(alice: &mut Client) -> BTreeMap<String, String> {
    let reply = iq_ok(
        alice,
        "get",
        None,
        &format!("<pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='{NODE}'/></pubsub>"),
    );
    let form = reply
        .get_child("pubsub", NS_PUBSUB_OWNER)
        .and_then(|p| p.get_child("configure", NS_PUBSUB_OWNER))
        .and_then(|c| c.get_child("x", NS_DATA))
        .expect("a node configuration form");
    form_values(form)
}

/// After a restart: bob, a member, enters with the history and the subject; carol is no
/// member; the owner finds the configuration and the member list as they were.
fn check_room(addr: SocketAddr, config_before: &BTreeMap<String, String>) {
    let mut alice = login(addr, "localhost", "alice");
    assert_eq!(&room_config(&mut alice), config_before);
    assert_eq!(affiliated(&mut alice, "member"), ["bob@localhost"]);
    assert_eq!(affiliated(&mut alice, "owner"), ["alice@localhost"]);
    let mut bob = login(addr, "localhost", "bob");
    let got = enter_and_speak(&mut bob, "bob");
    let own = got
        .iter()
        .find(|el| el.name() == "presence" && el.attr("from") == Some(&format!("{ROOM}/bob")))
        .unwrap_or_else(|| panic!("bob entered: {got:?}"));
    let item = own
        .get_child("x", NS_MUC_USER)
        .and_then(|x| x.get_child("item", NS_MUC_USER))
        .expect("an item");
    assert_eq!(item.attr("affiliation"), Some("member"), "{own:?}");
    let history: Vec<String> = got.iter().filter_map(body).collect();
    assert_eq!(history, ["said before the kill", "bob is here"], "{got:?}");
    assert!(
        got[..got.len() - 1]
            .iter()
            .filter(|el| body(el).is_some())
            .all(|el| el.has_child("delay", NS_DELAY)),
        "history carries delay stamps: {got:?}"
    );
    // The subject is the join's last stanza before live traffic ("Room Subject").
    let subject = got
        .iter()
        .rev()
        .find(|el| el.has_child("subject", NS_CLIENT) && body(el).is_none())
        .and_then(|el| el.get_child("subject", NS_CLIENT));
    assert_eq!(subject.map(Element::text).as_deref(), Some("kept subject"));
    let mut carol = login(addr, "localhost", "carol");
    let refused = enter(&mut carol, "carol");
    assert_eq!(
        stanza_error(refused.last().expect("an answer")).0,
        "registration-required"
    );
}

/// After a restart: the open node's items and configuration are as they were, a stranger
/// reads them; the nick is still the owner's and still closed to strangers.
fn check_pep(
    addr: SocketAddr,
    items_before: &[(String, String)],
    config_before: &BTreeMap<String, String>,
) {
    let mut alice = login(addr, "localhost", "alice");
    assert_eq!(&node_config(&mut alice), config_before);
    let nick = items(&mut alice, NICK);
    assert_eq!(
        item_texts(&nick),
        [("current".to_owned(), "Ally".to_owned())]
    );
    let mut carol = login(addr, "localhost", "carol");
    assert_eq!(item_texts(&items(&mut carol, NODE)), items_before);
    let refused = items(&mut carol, NICK);
    assert_eq!(stanza_error(&refused).0, "not-authorized", "{refused:?}");
    assert!(
        refused
            .get_child("error", NS_CLIENT)
            .is_some_and(|e| e.has_child("presence-subscription-required", NS_PUBSUB_ERRORS)),
        "{refused:?}"
    );
}

/// A persistent room (configuration, subject, affiliations, history) and personal eventing
/// items (an open multi-item node with its configuration, a presence-access nick) are in
/// the store once acknowledged, so a server killed with SIGKILL has them after a restart.
#[test]
fn rooms_and_personal_eventing_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = serve(dir.path());
    for user in ["alice", "bob", "carol"] {
        register(addr, "localhost", user);
    }
    let mut alice = login(addr, "localhost", "alice");
    make_room(&mut alice);
    publish(&mut alice);
    let room_before = room_config(&mut alice);
    assert_eq!(
        room_before
            .get("muc#roomconfig_membersonly")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        room_before
            .get("muc#roomconfig_persistentroom")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        room_before
            .get("muc#roomconfig_roomname")
            .map(String::as_str),
        Some("Kept")
    );
    let node_before = node_config(&mut alice);
    assert_eq!(
        node_before.get("pubsub#access_model").map(String::as_str),
        Some("open")
    );
    assert_eq!(
        node_before.get("pubsub#max_items").map(String::as_str),
        Some("5")
    );
    let mut carol = login(addr, "localhost", "carol");
    let items_before = item_texts(&items(&mut carol, NODE));
    assert_eq!(items_before.len(), 2, "{items_before:?}");
    // A room's message is reflected to its occupants while its archive row is being
    // committed; the room handles one stanza at a time and finishes a stanza's writes
    // before the next, so the answer to this last request follows every earlier write.
    iq_ok(
        &mut alice,
        "get",
        Some(ROOM),
        &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
    );
    alice.barrier();

    server.kill().expect("kill -9");
    server.wait().expect("reap");

    let (mut server, addr) = serve(dir.path());
    check_room(addr, &room_before);
    check_pep(addr, &items_before, &node_before);
    server.kill().expect("kill");
    server.wait().expect("reap");
}
