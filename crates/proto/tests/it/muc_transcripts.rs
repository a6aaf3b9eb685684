//! The multi-user chat room (XEP-0045) as a machine: stanzas in, effects out, no sockets.

use std::collections::BTreeMap;

use outpost_proto::jid::{BareJid, FullJid};
use outpost_proto::minidom::Element;
use outpost_proto::muc::{Affiliation, Context, Effect, NS_USER, Room, RoomConfig, Said};
use outpost_proto::stanza::ns;

const ROOM: &str = "lobby@conference.example.org";

fn jid(s: &str) -> FullJid {
    FullJid::new(s).expect("full JID")
}

fn cx(n: i64) -> Context {
    Context {
        now_ms: 1_000_000 + n,
        id: n,
        stanza_id: format!("sid{n}"),
        stamp: format!("stamp{n}"),
    }
}

fn el(xml: &str) -> Element {
    xml.parse().expect("XML")
}

fn room() -> Room {
    Room::new(
        BareJid::new(ROOM).unwrap(),
        RoomConfig::default(),
        BTreeMap::new(),
        20,
    )
}

/// The stanzas among the effects.
fn sent(effects: &[Effect]) -> Vec<&Element> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(el) => Some(el),
            _ => None,
        })
        .collect()
}

fn to<'a>(stanzas: &[&'a Element], who: &str) -> Vec<&'a Element> {
    stanzas
        .iter()
        .copied()
        .filter(|s| s.attr("to") == Some(who))
        .collect()
}

fn codes(presence: &Element) -> Vec<String> {
    presence
        .get_child("x", NS_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", NS_USER))
                .filter_map(|c| c.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn item_attr<'a>(presence: &'a Element, attr: &'a str) -> Option<&'a str> {
    presence
        .get_child("x", NS_USER)?
        .get_child("item", NS_USER)?
        .attr(attr)
}

fn join_xml(nick: &str) -> String {
    format!(
        "<presence xmlns='jabber:client' to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
}

fn error_condition(stanza: &Element) -> Option<String> {
    stanza
        .get_child("error", ns::CLIENT)?
        .children()
        .find(|c| c.ns() == ns::STANZAS)
        .map(|c| c.name().to_owned())
}

/// Alice creates the room and makes it an instant room; bob joins.
fn room_with_alice_and_bob() -> Room {
    let mut r = room();
    r.handle(
        &jid("alice@example.org/phone"),
        &el(&join_xml("alice")),
        &cx(1),
    );
    let instant = el(&format!(
        "<iq xmlns='jabber:client' type='set' id='c' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'/></query></iq>"
    ));
    r.handle(&jid("alice@example.org/phone"), &instant, &cx(2));
    r.handle(&jid("bob@example.net/pc"), &el(&join_xml("bob")), &cx(3));
    r
}

#[test]
fn the_first_joiner_creates_and_owns_a_locked_room() {
    let mut r = room();
    let alice = jid("alice@example.org/phone");
    let out = r.handle(&alice, &el(&join_xml("alice")), &cx(1));
    assert!(out.contains(&Effect::SaveAffiliation {
        jid: alice.to_bare(),
        affiliation: Affiliation::Owner
    }));
    let s = sent(&out);
    let own = to(&s, "alice@example.org/phone");
    // Own presence with 110 and 201 (created), then the (empty) subject.
    assert_eq!(
        own[0].attr("from"),
        Some("lobby@conference.example.org/alice")
    );
    let c = codes(own[0]);
    assert!(
        c.contains(&"110".to_owned()) && c.contains(&"201".to_owned()),
        "{c:?}"
    );
    assert_eq!(item_attr(own[0], "affiliation"), Some("owner"));
    assert_eq!(item_attr(own[0], "role"), Some("moderator"));
    assert!(own.last().unwrap().has_child("subject", ns::CLIENT));
    // Locked until configured: nobody else gets in.
    let bob = jid("bob@example.net/pc");
    let refused = r.handle(&bob, &el(&join_xml("bob")), &cx(2));
    assert_eq!(
        error_condition(sent(&refused)[0]).as_deref(),
        Some("item-not-found")
    );
    // The owner asks for the form and submits it: the room opens.
    let form = r.handle(
        &alice,
        &el(&format!("<iq xmlns='jabber:client' type='get' id='f' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>")),
        &cx(3),
    );
    assert!(
        sent(&form)[0]
            .get_child("query", "http://jabber.org/protocol/muc#owner")
            .is_some()
    );
    let submit = el(&format!(
        "<iq xmlns='jabber:client' type='set' id='c' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
         <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
         <field var='muc#roomconfig_roomname'><value>Lobby</value></field></x></query></iq>"
    ));
    let out = r.handle(&alice, &submit, &cx(4));
    assert!(out.contains(&Effect::SaveRoom));
    assert_eq!(sent(&out)[0].attr("type"), Some("result"));
    assert!(r.config().persistent);
    let joined = r.handle(&bob, &el(&join_xml("bob")), &cx(5));
    let s = sent(&joined);
    // Bob learns of alice, then of himself; alice learns of bob.
    assert_eq!(
        to(&s, "bob@example.net/pc")[0].attr("from"),
        Some("lobby@conference.example.org/alice")
    );
    assert_eq!(to(&s, "alice@example.org/phone").len(), 1);
    // Semi-anonymous: alice (a moderator) sees bob's real JID; bob does not see hers.
    assert_eq!(
        item_attr(to(&s, "alice@example.org/phone")[0], "jid"),
        Some("bob@example.net/pc")
    );
    assert_eq!(item_attr(to(&s, "bob@example.net/pc")[0], "jid"), None);
}

#[test]
fn messages_are_reflected_archived_and_replayed_to_newcomers() {
    let mut r = room_with_alice_and_bob();
    let bob = jid("bob@example.net/pc");
    let m = el(&format!(
        "<message xmlns='jabber:client' type='groupchat' id='b1' to='{ROOM}'><body>hi all</body></message>"
    ));
    let out = r.handle(&bob, &m, &cx(10));
    let archived = out.iter().find_map(|e| match e {
        Effect::Archive { id, from, .. } => Some((*id, from.clone())),
        _ => None,
    });
    assert_eq!(
        archived,
        Some((10, "lobby@conference.example.org/bob".to_owned()))
    );
    let s = sent(&out);
    assert_eq!(s.len(), 2, "to alice and back to bob");
    for m in &s {
        assert_eq!(m.attr("from"), Some("lobby@conference.example.org/bob"));
        // The sender's id comes back (stable ids) and the room's stanza-id is added.
        assert_eq!(m.attr("id"), Some("b1"));
        let sid = m.get_child("stanza-id", ns::SID).unwrap();
        assert_eq!(
            (sid.attr("by"), sid.attr("id")),
            (Some(ROOM), Some("sid10"))
        );
    }
    // Carol joins and gets it from the history, with a delay, before the subject.
    let carol = jid("carol@example.org/tab");
    let out = r.handle(&carol, &el(&join_xml("carol")), &cx(11));
    let mine = to(&sent(&out), "carol@example.org/tab");
    let history: Vec<&&Element> = mine
        .iter()
        .filter(|m| m.has_child("body", ns::CLIENT))
        .collect();
    assert_eq!(history.len(), 1);
    assert!(history[0].has_child("delay", ns::DELAY));
    assert!(mine.last().unwrap().has_child("subject", ns::CLIENT));
    // Asking for no history gets none.
    let dave = jid("dave@example.org/x");
    let none = el(&format!(
        "<presence xmlns='jabber:client' to='{ROOM}/dave'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
    ));
    let out = r.handle(&dave, &none, &cx(12));
    assert!(
        to(&sent(&out), "dave@example.org/x")
            .iter()
            .all(|m| !m.has_child("body", ns::CLIENT))
    );
    // A room restored after a restart replays what it is given.
    let mut restored = room();
    restored.restore_history(vec![Said {
        at_ms: 1,
        stamp: "s".into(),
        message: history[0].to_owned().clone(),
    }]);
    assert!(restored.is_empty());
}

#[test]
fn nicknames_conflict_change_and_are_shared_by_one_users_clients() {
    let mut r = room_with_alice_and_bob();
    let mallory = jid("mallory@example.org/m");
    let out = r.handle(&mallory, &el(&join_xml("bob")), &cx(20));
    assert_eq!(error_condition(sent(&out)[0]).as_deref(), Some("conflict"));
    // Bob's second client joins under the same nick: one occupant, two clients.
    let bob2 = jid("bob@example.net/phone");
    r.handle(&bob2, &el(&join_xml("bob")), &cx(21));
    assert_eq!(r.occupant_count(), 2);
    // Bob changes his nickname: 303 with the new nick, then presence under it.
    let bob = jid("bob@example.net/pc");
    let change = el(&format!(
        "<presence xmlns='jabber:client' to='{ROOM}/robert'/>"
    ));
    let out = r.handle(&bob, &change, &cx(22));
    let s = to(&sent(&out), "alice@example.org/phone");
    assert_eq!(s[0].attr("type"), Some("unavailable"));
    assert!(codes(s[0]).contains(&"303".to_owned()));
    assert_eq!(item_attr(s[0], "nick"), Some("robert"));
    assert_eq!(
        s[1].attr("from"),
        Some("lobby@conference.example.org/robert")
    );
}

#[test]
fn private_messages_self_ping_and_occupant_iqs() {
    let mut r = room_with_alice_and_bob();
    let alice = jid("alice@example.org/phone");
    let pm = el(&format!(
        "<message xmlns='jabber:client' type='chat' to='{ROOM}/bob'><body>psst</body></message>"
    ));
    let out = r.handle(&alice, &pm, &cx(30));
    let s = sent(&out);
    assert_eq!(s[0].attr("to"), Some("bob@example.net/pc"));
    assert_eq!(
        s[0].attr("from"),
        Some("lobby@conference.example.org/alice")
    );
    assert!(
        s[0].has_child("x", NS_USER),
        "marked as relayed by the room"
    );
    // XEP-0410: the room answers an occupant's ping to itself, refuses others'.
    let ping = |nick: &str| {
        el(&format!(
            "<iq xmlns='jabber:client' type='get' id='p' to='{ROOM}/{nick}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
    };
    let out = r.handle(&alice, &ping("alice"), &cx(31));
    assert_eq!(sent(&out)[0].attr("type"), Some("result"));
    let out = r.handle(&jid("stranger@example.org/s"), &ping("alice"), &cx(32));
    assert_eq!(
        error_condition(sent(&out)[0]).as_deref(),
        Some("not-acceptable")
    );
    // A ping to another occupant goes to that occupant, under the sender's nickname.
    let out = r.handle(&alice, &ping("bob"), &cx(33));
    assert_eq!(sent(&out)[0].attr("to"), Some("bob@example.net/pc"));
    assert_eq!(
        sent(&out)[0].attr("from"),
        Some("lobby@conference.example.org/alice")
    );
}

#[test]
fn kicks_bans_and_members_only() {
    let mut r = room_with_alice_and_bob();
    let alice = jid("alice@example.org/phone");
    let bob = jid("bob@example.net/pc");
    // Bob (a participant) may not kick alice (the owner).
    let kick = |nick: &str| {
        el(&format!(
            "<iq xmlns='jabber:client' type='set' id='k' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='{nick}' role='none'><reason>out</reason></item></query></iq>"
        ))
    };
    let out = r.handle(&bob, &kick("alice"), &cx(40));
    assert_eq!(
        error_condition(sent(&out)[0]).as_deref(),
        Some("not-allowed")
    );
    let out = r.handle(&alice, &kick("bob"), &cx(41));
    let gone = to(&sent(&out), "bob@example.net/pc");
    assert_eq!(gone[0].attr("type"), Some("unavailable"));
    assert!(codes(gone[0]).contains(&"307".to_owned()));
    assert_eq!(r.occupant_count(), 1);
    // Ban: bob cannot come back.
    let ban = el(&format!(
        "<iq xmlns='jabber:client' type='set' id='b' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@example.net' affiliation='outcast'/></query></iq>"
    ));
    let out = r.handle(&alice, &ban, &cx(42));
    assert!(out.contains(&Effect::SaveAffiliation {
        jid: bob.to_bare(),
        affiliation: Affiliation::Outcast
    }));
    let out = r.handle(&bob, &el(&join_xml("bob")), &cx(43));
    assert_eq!(error_condition(sent(&out)[0]).as_deref(), Some("forbidden"));
    // Members only: carol needs membership.
    let members_only = el(&format!(
        "<iq xmlns='jabber:client' type='set' id='c' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field></x></query></iq>"
    ));
    r.handle(&alice, &members_only, &cx(44));
    let carol = jid("carol@example.org/tab");
    let out = r.handle(&carol, &el(&join_xml("carol")), &cx(45));
    assert_eq!(
        error_condition(sent(&out)[0]).as_deref(),
        Some("registration-required")
    );
    let member = el(&format!(
        "<iq xmlns='jabber:client' type='set' id='m' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='carol@example.org' affiliation='member'/></query></iq>"
    ));
    r.handle(&alice, &member, &cx(46));
    let out = r.handle(&carol, &el(&join_xml("carol")), &cx(47));
    assert!(error_condition(sent(&out)[0]).is_none());
    // The member list is for admins.
    let list = el(&format!(
        "<iq xmlns='jabber:client' type='get' id='l' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='member'/></query></iq>"
    ));
    let out = r.handle(&alice, &list, &cx(48));
    let items: Vec<&str> = sent(&out)[0]
        .get_child("query", "http://jabber.org/protocol/muc#admin")
        .map(|q| q.children().filter_map(|c| c.attr("jid")).collect())
        .unwrap_or_default();
    assert_eq!(items, ["carol@example.org"]);
    let out = r.handle(&carol, &list, &cx(49));
    assert_eq!(error_condition(sent(&out)[0]).as_deref(), Some("forbidden"));
}

#[test]
fn passwords_moderation_and_the_last_one_out() {
    let mut r = room_with_alice_and_bob();
    let alice = jid("alice@example.org/phone");
    let config = el(&format!(
        "<iq xmlns='jabber:client' type='set' id='c' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'>\
         <x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_roomsecret'><value>s3cret</value></field>\
         <field var='muc#roomconfig_moderatedroom'><value>1</value></field></x></query></iq>"
    ));
    let out = r.handle(&alice, &config, &cx(50));
    // Occupants hear of the change (104).
    assert!(sent(&out).iter().any(|m| m.name() == "message"));
    let carol = jid("carol@example.org/tab");
    let out = r.handle(&carol, &el(&join_xml("carol")), &cx(51));
    assert_eq!(
        error_condition(sent(&out)[0]).as_deref(),
        Some("not-authorized")
    );
    let with_password = el(&format!(
        "<presence xmlns='jabber:client' to='{ROOM}/carol'><x xmlns='http://jabber.org/protocol/muc'><password>s3cret</password></x></presence>"
    ));
    let out = r.handle(&carol, &with_password, &cx(52));
    let own = to(&sent(&out), "carol@example.org/tab");
    // A newcomer in a moderated room is a visitor, without voice.
    assert!(own.iter().any(|p| item_attr(p, "role") == Some("visitor")));
    let m = el(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{ROOM}'><body>may I?</body></message>"
    ));
    let out = r.handle(&carol, &m, &cx(53));
    assert_eq!(error_condition(sent(&out)[0]).as_deref(), Some("forbidden"));
    // Everyone leaves a temporary room: it is destroyed.
    for who in [
        "carol@example.org/tab",
        "bob@example.net/pc",
        "alice@example.org/phone",
    ] {
        let leave = el(&format!(
            "<presence xmlns='jabber:client' type='unavailable' to='{ROOM}/x'/>"
        ));
        let out = r.handle(&jid(who), &leave, &cx(54));
        let last = who.starts_with("alice");
        assert_eq!(out.contains(&Effect::Destroyed), last, "{who}");
    }
}

#[test]
fn delivery_failures_remove_a_client_but_wan_outages_do_not() {
    let mut r = room_with_alice_and_bob();
    let bob = jid("bob@example.net/pc");
    let outage = el(&format!(
        "<presence xmlns='jabber:client' type='error' from='bob@example.net/pc' to='{ROOM}/alice'>\
         <error type='wait'><remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    ));
    r.handle(&bob, &outage, &cx(60));
    assert_eq!(r.occupant_count(), 2, "a WAN outage keeps remote occupants");
    let gone = el(&format!(
        "<message xmlns='jabber:client' type='error' from='bob@example.net/pc' to='{ROOM}'>\
         <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    ));
    let out = r.handle(&bob, &gone, &cx(61));
    assert_eq!(r.occupant_count(), 1);
    let told = to(&sent(&out), "alice@example.org/phone");
    assert!(codes(told[0]).contains(&"333".to_owned()));
    // The same for a client the server itself found gone.
    let out = r.drop_client(&jid("alice@example.org/phone"));
    assert!(out.contains(&Effect::Destroyed) || r.config().persistent);
}

/// §7.2.15: history is what was said; a subject change is not, and a newcomer gets the
/// history, then the subject once.
#[test]
fn subject_changes_are_not_history() {
    let mut r = room_with_alice_and_bob();
    let alice = jid("alice@example.org/phone");
    let subject = el(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{ROOM}'><subject>Today</subject></message>"
    ));
    let out = r.handle(&alice, &subject, &cx(50));
    assert!(out.contains(&Effect::SaveRoom));
    assert!(!out.iter().any(|e| matches!(e, Effect::Archive { .. })));
    let said = el(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{ROOM}'><body>hello</body></message>"
    ));
    r.handle(&alice, &said, &cx(51));
    let carol = jid("carol@example.org/tab");
    let out = r.handle(&carol, &el(&join_xml("carol")), &cx(52));
    let messages: Vec<&Element> = to(&sent(&out), "carol@example.org/tab")
        .into_iter()
        .filter(|s| s.name() == "message")
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].has_child("body", ns::CLIENT));
    assert_eq!(
        messages[1]
            .get_child("subject", ns::CLIENT)
            .map(Element::text),
        Some("Today".to_owned())
    );
}

/// §7.5: a private message of type groupchat is refused with bad-request.
#[test]
fn a_groupchat_private_message_is_a_bad_request() {
    let mut r = room_with_alice_and_bob();
    let pm = el(&format!(
        "<message xmlns='jabber:client' type='groupchat' to='{ROOM}/bob'><body>psst</body></message>"
    ));
    let out = r.handle(&jid("alice@example.org/phone"), &pm, &cx(60));
    let s = sent(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(error_condition(s[0]).as_deref(), Some("bad-request"));
}

/// A kicked occupant leaves with role none (§8.2), a banned one as an outcast (§9.1), and
/// the change is stored before the admin hears it was made.
#[test]
fn who_leaves_by_force_leaves_without_a_role() {
    let mut r = room_with_alice_and_bob();
    let alice = jid("alice@example.org/phone");
    let admin = |item: &str| {
        el(&format!(
            "<iq xmlns='jabber:client' type='set' id='a' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query></iq>"
        ))
    };
    let out = r.handle(&alice, &admin("<item nick='bob' role='none'/>"), &cx(70));
    let gone = to(&sent(&out), "bob@example.net/pc");
    assert_eq!(item_attr(gone[0], "role"), Some("none"));
    r.handle(&jid("bob@example.net/pc"), &el(&join_xml("bob")), &cx(71));
    let out = r.handle(
        &alice,
        &admin("<item jid='bob@example.net' affiliation='outcast'/>"),
        &cx(72),
    );
    let gone = to(&sent(&out), "bob@example.net/pc");
    assert!(codes(gone[0]).contains(&"301".to_owned()));
    assert_eq!(item_attr(gone[0], "affiliation"), Some("outcast"));
    assert_eq!(item_attr(gone[0], "role"), Some("none"));
    let saved = out
        .iter()
        .position(|e| matches!(e, Effect::SaveAffiliation { .. }));
    let answered = out.iter().position(|e| match e {
        Effect::Send(s) => s.name() == "iq" && s.attr("type") == Some("result"),
        _ => false,
    });
    assert!(saved.is_some() && saved < answered, "{out:?}");
}
