//! Personal eventing (XEP-0163) over real sockets: publish options, access models,
//! notifications filtered by entity capabilities (XEP-0115), last items on presence,
//! private XML (XEP-0049) and bookmarks both ways (XEP-0402), avatars both ways
//! (XEP-0398), and items that survive a restart.

use outpost_proto::minidom::Element;
use outpost_testkit::*;

const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";
const NICK: &str = "http://jabber.org/protocol/nick";

async fn users(server: &TestServer) {
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    server.add_user("carol", "singer").await;
}

/// A publish with optional publish-options fields.
fn publish(node: &str, id: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let options = if options.is_empty() {
        String::new()
    } else {
        let fields: String = options
            .iter()
            .map(|(var, v)| format!("<field var='{var}'><value>{v}</value></field>"))
            .collect();
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'>\
             <value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             {fields}</x></publish-options>"
        )
    };
    format!(
        "<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item>\
         </publish>{options}</pubsub>"
    )
}

fn items_request(node: &str) -> String {
    format!("<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>")
}

/// The ids of the items in an items result.
fn item_ids(reply: &Element) -> Vec<String> {
    reply
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("items", NS_PUBSUB))
        .map(|items| {
            items
                .children()
                .filter_map(|i| i.attr("id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn app_condition(reply: &Element) -> Option<String> {
    reply
        .get_child("error", NS_CLIENT)?
        .children()
        .find(|c| c.ns() == NS_ERRORS)
        .map(|c| c.name().to_owned())
}

/// The node and item ids of a pubsub event message.
fn event_items(el: &Element) -> Option<(String, Vec<String>)> {
    let items = el
        .get_child("event", NS_EVENT)?
        .get_child("items", NS_EVENT)?;
    let ids = items
        .children()
        .filter_map(|i| i.attr("id").map(str::to_owned))
        .collect();
    Some((items.attr("node")?.to_owned(), ids))
}

/// `from` asks for `to`'s presence and `to` approves; both rosters are stored once their
/// clients' next pings are answered.
async fn subscribe(from: &mut Client, from_jid: &str, to: &mut Client, to_jid: &str) {
    from.send(&format!("<presence to='{to_jid}' type='subscribe'/>"))
        .await;
    to.recv_where(|el| el.attr("type") == Some("subscribe"))
        .await;
    to.send(&format!("<presence to='{from_jid}' type='subscribed'/>"))
        .await;
    to.barrier().await;
    from.barrier().await;
}

/// Makes `a` and `b` mutual contacts (both subscriptions `both`), both available.
async fn befriend(a: &mut Client, a_jid: &str, b: &mut Client, b_jid: &str) {
    a.available().await;
    b.available().await;
    subscribe(a, a_jid, b, b_jid).await;
    subscribe(b, b_jid, a, a_jid).await;
}

#[tokio::test]
async fn open_nodes_with_publish_options_are_readable_by_strangers() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let list = "<list xmlns='eu.siacs.conversations.axolotl'><device id='42'/></list>";
    let reply = alice
        .query(
            "set",
            None,
            &publish(
                DEVICELIST,
                "current",
                list,
                &[("pubsub#access_model", "open"), ("pubsub#max_items", "max")],
            ),
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    // A stranger, not even in alice's roster, reads it (OMEMO needs that).
    let mut carol = server.login("carol", "singer", "tab").await;
    let got = carol
        .query("get", Some("alice@localhost"), &items_request(DEVICELIST))
        .await;
    assert_eq!(item_ids(&got), ["current"], "{got:?}");
    // The account says it is a PEP service with publish options.
    let disco = carol
        .query(
            "get",
            Some("alice@localhost"),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await;
    let q = disco.get_child("query", NS_DISCO_INFO).expect("disco");
    assert!(
        q.children()
            .any(|c| c.attr("category") == Some("pubsub") && c.attr("type") == Some("pep"))
    );
    assert!(
        q.children()
            .any(|c| c.attr("var") == Some("http://jabber.org/protocol/pubsub#publish-options"))
    );
    // And lists the node for those who may read it.
    let items = carol
        .query(
            "get",
            Some("alice@localhost"),
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await;
    let nodes: Vec<&str> = items
        .get_child("query", NS_DISCO_ITEMS)
        .map(|q| q.children().filter_map(|i| i.attr("node")).collect())
        .unwrap_or_default();
    assert_eq!(nodes, [DEVICELIST]);
}

#[tokio::test]
async fn presence_nodes_need_a_subscription() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    let nick = "<nick xmlns='http://jabber.org/protocol/nick'>Ally</nick>";
    let reply = alice
        .query("set", None, &publish(NICK, "current", nick, &[]))
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let refused = bob
        .query("get", Some("alice@localhost"), &items_request(NICK))
        .await;
    assert_eq!(stanza_error(&refused).0, "not-authorized");
    assert_eq!(
        app_condition(&refused).as_deref(),
        Some("presence-subscription-required")
    );
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;
    let got = bob
        .query("get", Some("alice@localhost"), &items_request(NICK))
        .await;
    assert_eq!(item_ids(&got), ["current"], "{got:?}");
    // Only the owner publishes.
    let denied = bob
        .query(
            "set",
            Some("alice@localhost"),
            &publish(NICK, "x", nick, &[]),
        )
        .await;
    assert_eq!(stanza_error(&denied).0, "forbidden");
}

fn subscription(node: &str, jid: &str, op: &str) -> String {
    format!("<pubsub xmlns='{NS_PUBSUB}'><{op} node='{node}' jid='{jid}'/></pubsub>")
}

/// The ids of a pubsub event about `node`, if `el` is one.
fn event_ids(el: &Element, node: &str) -> Option<Vec<String>> {
    event_items(el)
        .filter(|(n, _)| n == node)
        .map(|(_, ids)| ids)
}

/// An open device list of alice's with one item, `v1`; carol, a stranger, logged in and
/// available (events to a bare JID reach available clients, RFC 6121 §8.5.2.1.1).
async fn open_node_and_stranger(server: &TestServer) -> (Client, Client) {
    users(server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let reply = alice.query("set", None, &publish_devices("v1")).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let mut carol = server.login("carol", "singer", "tab").await;
    carol.available().await;
    (alice, carol)
}

fn publish_devices(id: &str) -> String {
    let list = "<list xmlns='eu.siacs.conversations.axolotl'/>";
    publish(DEVICELIST, id, list, &[("pubsub#access_model", "open")])
}

/// Sends a subscribe or unsubscribe to alice's `node` for `jid`.
async fn subscribing(who: &mut Client, node: &str, jid: &str, op: &str) -> Element {
    who.query("set", Some("alice@localhost"), &subscription(node, jid, op))
        .await
}

async fn next_device_event(carol: &mut Client) -> Vec<String> {
    let event = carol
        .recv_stashing(|el| event_ids(el, DEVICELIST).is_some())
        .await;
    event_ids(&event, DEVICELIST).unwrap_or_default()
}

/// XEP-0163 §8: a stranger follows an open node by subscribing, without presence or caps.
#[tokio::test]
async fn explicit_subscribers_hear_of_open_nodes_until_they_leave() {
    let server = TestServer::start().await;
    let (mut alice, mut carol) = open_node_and_stranger(&server).await;
    let mut bob = server.login("bob", "builder", "pc").await;
    // Only for oneself.
    let forged = subscribing(&mut bob, DEVICELIST, "carol@localhost", "subscribe").await;
    assert_eq!(app_condition(&forged).as_deref(), Some("invalid-jid"));
    let reply = subscribing(&mut carol, DEVICELIST, "carol@localhost", "subscribe").await;
    let sub = reply
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("subscription", NS_PUBSUB))
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(sub.attr("subscription"), Some("subscribed"));
    // The last item at once, then each new one.
    assert_eq!(next_device_event(&mut carol).await, ["v1"]);
    alice.query("set", None, &publish_devices("v2")).await;
    assert_eq!(next_device_event(&mut carol).await, ["v2"]);
    let listed = carol
        .query(
            "get",
            Some("alice@localhost"),
            &format!("<pubsub xmlns='{NS_PUBSUB}'><subscriptions/></pubsub>"),
        )
        .await;
    let nodes: Vec<&str> = listed
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("subscriptions", NS_PUBSUB))
        .map(|l| l.children().filter_map(|s| s.attr("node")).collect())
        .unwrap_or_default();
    assert_eq!(nodes, [DEVICELIST], "{listed:?}");

    let left = subscribing(&mut carol, DEVICELIST, "carol@localhost", "unsubscribe").await;
    assert_eq!(left.attr("type"), Some("result"), "{left:?}");
    let again = subscribing(&mut carol, DEVICELIST, "carol@localhost", "unsubscribe").await;
    assert_eq!(app_condition(&again).as_deref(), Some("not-subscribed"));
    alice.query("set", None, &publish_devices("v3")).await;
    carol.assert_quiet().await;
}

/// A presence-only node turns strangers away; a deleted node tells its subscribers.
#[tokio::test]
async fn subscriptions_need_access_and_end_with_the_node() {
    let server = TestServer::start().await;
    let (mut alice, mut carol) = open_node_and_stranger(&server).await;
    let nick = "<nick xmlns='http://jabber.org/protocol/nick'>Ally</nick>";
    alice
        .query("set", None, &publish(NICK, "current", nick, &[]))
        .await;
    let refused = subscribing(&mut carol, NICK, "carol@localhost", "subscribe").await;
    assert_eq!(
        app_condition(&refused).as_deref(),
        Some("presence-subscription-required")
    );
    // A full JID subscribes that one client.
    let full = "carol@localhost/tab";
    subscribing(&mut carol, DEVICELIST, full, "subscribe").await;
    assert_eq!(next_device_event(&mut carol).await, ["v1"]);
    let delete =
        format!("<pubsub xmlns='{NS_PUBSUB}#owner'><delete node='{DEVICELIST}'/></pubsub>");
    let deleted = alice.query("set", None, &delete).await;
    assert_eq!(deleted.attr("type"), Some("result"));
    let event = carol
        .recv_stashing(|el| {
            el.get_child("event", NS_EVENT)
                .and_then(|e| e.get_child("delete", NS_EVENT))
                .is_some()
        })
        .await;
    assert_eq!(event.attr("to"), Some(full));
    // A node made again under the same name starts without them.
    alice.query("set", None, &publish_devices("v4")).await;
    carol.assert_quiet().await;
}

#[tokio::test]
async fn events_go_to_interested_clients_and_last_items_come_with_presence() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let mut bob = server.login("bob", "builder", "pc").await;
    befriend(&mut alice, "alice@localhost", &mut bob, "bob@localhost").await;
    let mut bob_tab = server.login("bob", "builder", "tab").await;
    // Bob's pc wants nicknames; his tablet announces nothing of the kind.
    bob.announce_caps(&[NS_DISCO_INFO, &format!("{NICK}+notify")])
        .await;
    bob_tab.announce_caps(&[NS_DISCO_INFO]).await;
    let nick = "<nick xmlns='http://jabber.org/protocol/nick'>Ally</nick>";
    alice
        .query("set", None, &publish(NICK, "current", nick, &[]))
        .await;
    let event = bob.recv_where(|el| event_items(el).is_some()).await;
    assert_eq!(event.attr("from"), Some("alice@localhost"));
    assert_eq!(
        event_items(&event),
        Some((NICK.to_owned(), vec!["current".to_owned()]))
    );
    bob_tab
        .assert_none_before_ping(|el| event_items(el).is_some(), "event without +notify")
        .await;

    // A new client of bob's with the same caps gets the last item at once, unasked: the
    // hash is known now.
    let mut bob_laptop = server.login("bob", "builder", "laptop").await;
    let seen = bob_laptop
        .announce_caps(&[NS_DISCO_INFO, &format!("{NICK}+notify")])
        .await;
    let last = match seen.iter().find(|el| event_items(el).is_some()) {
        Some(el) => el.clone(),
        None => bob_laptop.recv_where(|el| event_items(el).is_some()).await,
    };
    assert_eq!(
        event_items(&last),
        Some((NICK.to_owned(), vec!["current".to_owned()]))
    );
}

#[tokio::test]
async fn publish_options_are_preconditions() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let node = "urn:xmpp:omemo:2:bundles";
    let bundle = "<bundle xmlns='urn:xmpp:omemo:2'/>";
    alice
        .query("set", None, &publish(node, "1", bundle, &[]))
        .await;
    // The node exists with the default (presence) model: open does not match.
    let refused = alice
        .query(
            "set",
            None,
            &publish(node, "2", bundle, &[("pubsub#access_model", "open")]),
        )
        .await;
    assert_eq!(stanza_error(&refused).0, "conflict");
    assert_eq!(
        app_condition(&refused).as_deref(),
        Some("precondition-not-met")
    );
    // The owner reconfigures, as clients do, and the publish goes through.
    let configure = format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='{node}'>\
         <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/protocol/pubsub#node_config</value></field>\
         <field var='pubsub#access_model'><value>open</value></field>\
         <field var='pubsub#max_items'><value>max</value></field></x></configure></pubsub>"
    );
    let reply = alice.query("set", None, &configure).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    for id in ["2", "3"] {
        let reply = alice
            .query(
                "set",
                None,
                &publish(
                    node,
                    id,
                    bundle,
                    &[("pubsub#access_model", "open"), ("pubsub#max_items", "max")],
                ),
            )
            .await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    }
    // Multiple items (one per device), oldest first.
    let got = alice.query("get", None, &items_request(node)).await;
    assert_eq!(item_ids(&got), ["1", "2", "3"]);
    // Retract one; delete the node.
    let retract = format!(
        "<pubsub xmlns='{NS_PUBSUB}'><retract node='{node}' notify='true'><item id='2'/></retract></pubsub>"
    );
    assert_eq!(
        alice.query("set", None, &retract).await.attr("type"),
        Some("result")
    );
    let got = alice.query("get", None, &items_request(node)).await;
    assert_eq!(item_ids(&got), ["1", "3"]);
    let delete = format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{node}'/></pubsub>"
    );
    assert_eq!(
        alice.query("set", None, &delete).await.attr("type"),
        Some("result")
    );
    let gone = alice.query("get", None, &items_request(node)).await;
    assert_eq!(stanza_error(&gone).0, "item-not-found");
}

#[tokio::test]
async fn bookmarks_are_one_list_whichever_way_they_are_written() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    // An old client writes XEP-0048 bookmarks into private XML.
    let storage = "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
        <conference jid='lobby@conference.localhost' name='Lobby' autojoin='true'>\
        <nick>alice</nick></conference></storage></query>";
    let reply = alice.query("set", None, storage).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    // A new client sees them as XEP-0402 items, private to alice.
    let got = alice
        .query("get", None, &items_request("urn:xmpp:bookmarks:1"))
        .await;
    assert_eq!(item_ids(&got), ["lobby@conference.localhost"]);
    let mut bob = server.login("bob", "builder", "pc").await;
    let refused = bob
        .query(
            "get",
            Some("alice@localhost"),
            &items_request("urn:xmpp:bookmarks:1"),
        )
        .await;
    assert_eq!(stanza_error(&refused).0, "not-allowed");
    // The new client adds one; the old client reads both.
    let conference = "<conference xmlns='urn:xmpp:bookmarks:1' name='Ops' autojoin='false'/>";
    alice
        .query(
            "set",
            None,
            &publish(
                "urn:xmpp:bookmarks:1",
                "ops@conference.localhost",
                conference,
                &[
                    ("pubsub#access_model", "whitelist"),
                    ("pubsub#max_items", "max"),
                ],
            ),
        )
        .await;
    let read = alice
        .query(
            "get",
            None,
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>",
        )
        .await;
    let rooms: Vec<&str> = read
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("storage", "storage:bookmarks"))
        .map(|s| s.children().filter_map(|c| c.attr("jid")).collect())
        .unwrap_or_default();
    assert_eq!(
        rooms,
        ["lobby@conference.localhost", "ops@conference.localhost"]
    );
    // Other private XML is kept as it is.
    alice
        .query("set", None, "<query xmlns='jabber:iq:private'><notes xmlns='storage:rosternotes'><note jid='bob@localhost'>builder</note></notes></query>")
        .await;
    let notes = alice
        .query(
            "get",
            None,
            "<query xmlns='jabber:iq:private'><notes xmlns='storage:rosternotes'/></query>",
        )
        .await;
    let note = notes
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("notes", "storage:rosternotes"))
        .and_then(|n| n.children().next())
        .map(Element::text);
    assert_eq!(note.as_deref(), Some("builder"));
}

#[tokio::test]
async fn avatars_go_both_ways_and_into_presence() {
    let server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    // "hello" in base64; its SHA-1 is the avatar id.
    let vcard = "<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>\
                 <BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard>";
    let reply = alice.query("set", None, vcard).await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let sha = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";
    let meta = alice
        .query("get", None, &items_request("urn:xmpp:avatar:metadata"))
        .await;
    assert_eq!(item_ids(&meta), [sha]);
    let data = alice
        .query("get", None, &items_request("urn:xmpp:avatar:data"))
        .await;
    assert_eq!(item_ids(&data), [sha]);
    // Presence carries the hash (XEP-0153).
    alice.send("<presence/>").await;
    let own = alice.recv_presence_from("alice@localhost/phone").await;
    let photo = own
        .get_child("x", "vcard-temp:x:update")
        .and_then(|x| x.get_child("photo", "vcard-temp:x:update"))
        .map(Element::text);
    assert_eq!(photo.as_deref(), Some(sha));

    // A new avatar published with XEP-0084 lands in the vCard.
    let new_sha = "d3486ae9136e7856bc42212385ea797094475802"; // SHA-1 of "world"
    alice
        .query(
            "set",
            None,
            &publish(
                "urn:xmpp:avatar:data",
                new_sha,
                "<data xmlns='urn:xmpp:avatar:data'>d29ybGQ=</data>",
                &[],
            ),
        )
        .await;
    let info = format!(
        "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{new_sha}' bytes='5' type='image/jpeg'/></metadata>"
    );
    alice
        .query(
            "set",
            None,
            &publish("urn:xmpp:avatar:metadata", new_sha, &info, &[]),
        )
        .await;
    let card = alice
        .query("get", None, "<vCard xmlns='vcard-temp'/>")
        .await;
    let photo = card
        .get_child("vCard", NS_VCARD)
        .and_then(|v| v.get_child("PHOTO", NS_VCARD))
        .expect("a photo");
    assert_eq!(
        photo
            .get_child("BINVAL", NS_VCARD)
            .map(Element::text)
            .as_deref(),
        Some("d29ybGQ=")
    );
    assert_eq!(
        photo
            .get_child("TYPE", NS_VCARD)
            .map(Element::text)
            .as_deref(),
        Some("image/jpeg")
    );
    // The name set earlier is still there.
    assert!(
        card.get_child("vCard", NS_VCARD)
            .is_some_and(|v| v.has_child("FN", NS_VCARD))
    );
}

#[tokio::test]
async fn items_survive_a_restart() {
    let mut server = TestServer::start().await;
    users(&server).await;
    let mut alice = server.login("alice", "wonderland", "phone").await;
    let list = "<list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list>";
    alice
        .query(
            "set",
            None,
            &publish(
                DEVICELIST,
                "current",
                list,
                &[("pubsub#access_model", "open")],
            ),
        )
        .await;
    drop(alice);
    server.restart().await;
    let mut carol = server.login("carol", "singer", "tab").await;
    let got = carol
        .query("get", Some("alice@localhost"), &items_request(DEVICELIST))
        .await;
    assert_eq!(item_ids(&got), ["current"], "{got:?}");
}
