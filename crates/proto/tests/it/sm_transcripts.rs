//! Stream management (XEP-0198) and client state indication (XEP-0352) on the client
//! stream machine: enabling, counting, acknowledging, resuming on a new stream.

use outpost_proto::c2s::Transport;
use outpost_proto::jid::FullJid;
use outpost_proto::minidom::Element;
use outpost_proto::stanza::ns;
use outpost_proto::xml::XmlEvent;

use crate::c2s_transcripts::{
    Ev, Session, assert_stream_error, authenticated_with, authenticated_with_features, bind, clark,
    config, feature_names, stanza,
};

const JID: &str = "juliet@example.com/balcony";

fn managed_config() -> outpost_proto::c2s::C2sConfig {
    outpost_proto::c2s::C2sConfig {
        stream_management: true,
        ..config(Transport::DirectTls)
    }
}

fn jid() -> FullJid {
    FullJid::new(JID).expect("a full JID")
}

fn elements(out: &[XmlEvent]) -> Vec<&Element> {
    out.iter().map(stanza).collect()
}

fn message(i: u32) -> Element {
    format!("<message xmlns='jabber:client' to='{JID}' id='m{i}'><body>{i}</body></message>")
        .parse()
        .expect("a message")
}

/// A bound, managed stream whose client asked for resumption; the server granted it
/// as `id`.
fn managed(id: &str) -> Session {
    let mut s = bind(authenticated_with(managed_config()));
    assert!(
        s.send("<enable xmlns='urn:xmpp:sm:3' resume='true' max='600'/>")
            .is_empty()
    );
    assert_eq!(s.events(), [Ev::SmEnable(true, Some(600))]);
    s.c2s.sm_enabled(Some((id.to_owned(), 300)));
    let out = s.output();
    let enabled = elements(&out)[0];
    assert!(enabled.is("enabled", ns::SM), "{enabled:?}");
    assert_eq!(enabled.attr("id"), Some(id));
    assert_eq!(enabled.attr("resume"), Some("true"));
    assert_eq!(enabled.attr("max"), Some("300"));
    s
}

#[test]
fn features_offer_sm_and_csi_only_when_configured() {
    let (_, features) = authenticated_with_features(managed_config());
    let names = feature_names(&features);
    assert!(names.contains(&clark(ns::SM, "sm")), "{names:?}");
    assert!(names.contains(&clark(ns::CSI, "csi")), "{names:?}");
    let (s, features) = authenticated_with_features(config(Transport::DirectTls));
    let names = feature_names(&features);
    assert!(!names.contains(&clark(ns::SM, "sm")), "{names:?}");
    // Without it, stream management elements are not a thing this server speaks.
    let mut s = bind(s);
    let out = s.send("<enable xmlns='urn:xmpp:sm:3'/>");
    assert_stream_error(&out, "unsupported-stanza-type");
}

#[test]
fn enable_and_resume_are_refused_out_of_place() {
    let mut s = authenticated_with(managed_config());
    // Before binding there is no session to manage.
    let out = s.send("<enable xmlns='urn:xmpp:sm:3'/>");
    let failed = elements(&out)[0];
    assert!(failed.is("failed", ns::SM), "{failed:?}");
    assert!(failed.has_child("unexpected-request", ns::STANZAS));
    // A resume without a valid h is a bad request.
    let out = s.send("<resume xmlns='urn:xmpp:sm:3' previd='x' h='many'/>");
    assert!(elements(&out)[0].has_child("bad-request", ns::STANZAS));
    let mut s = managed("sm-1");
    // Enabled twice, or a resume on a bound stream.
    for xml in [
        "<enable xmlns='urn:xmpp:sm:3'/>",
        "<resume xmlns='urn:xmpp:sm:3' previd='sm-1' h='0'/>",
    ] {
        let out = s.send(xml);
        assert!(
            elements(&out)[0].has_child("unexpected-request", ns::STANZAS),
            "{xml}: {out:?}"
        );
    }
    assert!(s.events().is_empty());
}

#[test]
fn both_sides_count_and_acknowledge() {
    let mut s = managed("sm-1");
    // Two stanzas from the client, then its request: it has handled two.
    s.send("<message xmlns='jabber:client' to='romeo@example.net'><body>a</body></message>");
    s.send("<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert_eq!(s.events().len(), 2);
    let out = s.send("<r xmlns='urn:xmpp:sm:3'/>");
    let a = elements(&out)[0];
    assert!(a.is("a", ns::SM) && a.attr("h") == Some("2"), "{a:?}");

    // Three stanzas to the client, one request for all of them.
    for i in 0..3 {
        s.c2s.send(&message(i));
    }
    s.c2s.request_ack();
    s.c2s.request_ack();
    let out = s.output();
    let names: Vec<&str> = elements(&out).iter().map(|e| e.name()).collect();
    assert_eq!(names, ["message", "message", "message", "r"]);
    assert_eq!(s.c2s.sm().map(|sm| sm.unacked_len()), Some(3));
    // An answer that leaves one unacknowledged (it went out after the request) is
    // followed by a request for it, or it would wait for the next stanza to be covered.
    let out = s.send("<a xmlns='urn:xmpp:sm:3' h='2'/>");
    assert_eq!(s.c2s.sm().map(|sm| sm.unacked_len()), Some(1));
    assert!(s.c2s.sm().is_some_and(|sm| sm.ack_requested()));
    let names: Vec<&str> = elements(&out).iter().map(|e| e.name()).collect();
    assert_eq!(names, ["r"]);
    // Nothing unacknowledged after the next ack, so no request either.
    assert!(s.send("<a xmlns='urn:xmpp:sm:3' h='3'/>").is_empty());
    s.c2s.request_ack();
    assert!(s.output().is_empty());
}

#[test]
fn acknowledging_too_much_or_nothing_ends_the_stream() {
    let mut s = managed("sm-1");
    s.c2s.send(&message(0));
    s.output();
    let out = s.send("<a xmlns='urn:xmpp:sm:3' h='5'/>");
    assert_stream_error(&out, "undefined-condition");
    let mut s = managed("sm-2");
    let out = s.send("<a xmlns='urn:xmpp:sm:3'/>");
    assert_stream_error(&out, "invalid-xml");
}

#[test]
fn a_new_stream_resumes_and_gets_what_was_not_acknowledged() {
    let mut old = managed("sm-1");
    old.send("<message xmlns='jabber:client' to='romeo@example.net'><body>a</body></message>");
    old.events();
    old.c2s.set_time(1_000);
    for i in 0..4 {
        old.c2s.send(&message(i));
    }
    old.output();
    // The connection dies; the server keeps the state.
    let state = old.c2s.take_sm().expect("managed");
    assert_eq!(state.unacked_len(), 4);

    let mut new = authenticated_with(managed_config());
    assert!(
        new.send("<resume xmlns='urn:xmpp:sm:3' previd='sm-1' h='1'/>")
            .is_empty()
    );
    assert_eq!(new.events(), [Ev::SmResume("sm-1".to_owned(), 1)]);
    new.c2s.sm_resumed(jid(), state, 1);
    let out = new.output();
    let els = elements(&out);
    assert!(els[0].is("resumed", ns::SM), "{els:?}");
    assert_eq!(els[0].attr("previd"), Some("sm-1"));
    // The server had handled one stanza from the client.
    assert_eq!(els[0].attr("h"), Some("1"));
    let resent: Vec<&str> = els[1..4].iter().filter_map(|e| e.attr("id")).collect();
    assert_eq!(resent, ["m1", "m2", "m3"]);
    assert!(els[4].is("r", ns::SM));
    assert_eq!(new.events(), [Ev::Bound(JID.to_owned())]);
    // The stream goes on where the old one was: counts continue.
    new.send("<presence xmlns='jabber:client'/>");
    assert!(matches!(new.events()[..], [Ev::Stanza(_)]));
    let out = new.send("<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(elements(&out)[0].attr("h"), Some("2"));
    new.send("<a xmlns='urn:xmpp:sm:3' h='4'/>");
    assert_eq!(new.c2s.sm().map(|sm| sm.unacked_len()), Some(0));
    assert_eq!(new.c2s.sm().and_then(|sm| sm.id()), Some("sm-1"));
}

#[test]
fn a_refused_resumption_leaves_the_stream_to_bind() {
    let mut s = authenticated_with(managed_config());
    s.send("<resume xmlns='urn:xmpp:sm:3' previd='gone' h='3'/>");
    assert_eq!(s.events(), [Ev::SmResume("gone".to_owned(), 3)]);
    s.c2s.sm_resume_failed(Some(7));
    let out = s.output();
    let failed = elements(&out)[0];
    assert!(failed.is("failed", ns::SM), "{failed:?}");
    assert!(failed.has_child("item-not-found", ns::STANZAS));
    assert_eq!(failed.attr("h"), Some("7"));
    let s = bind(s);
    assert!(s.c2s.sm().is_none());
}

#[test]
fn unacknowledged_stanzas_keep_their_queue_time() {
    let mut s = managed("sm-1");
    s.c2s.set_time(5_000);
    s.c2s.send(&message(0));
    s.c2s
        .send_raw("<message xmlns='jabber:client' id='offline'/>");
    // Not stanzas: never counted.
    s.c2s
        .send(&Element::builder("features", ns::STREAM).build());
    let mut state = s.c2s.take_sm().expect("managed");
    let queued = state.take_unacked();
    assert_eq!(queued.len(), 2);
    assert!(queued.iter().all(|u| u.queued_ms == 5_000));
    assert!(queued[1].xml.contains("offline"));
}

#[test]
fn client_state_is_reported() {
    let mut s = managed("sm-1");
    s.send("<inactive xmlns='urn:xmpp:csi:0'/>");
    s.send("<active xmlns='urn:xmpp:csi:0'/>");
    assert_eq!(s.events(), [Ev::ClientState(false), Ev::ClientState(true)]);
    // CSI nonzas are not stanzas: the count does not move.
    let out = s.send("<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(elements(&out)[0].attr("h"), Some("0"));
    let out = s.send("<sleepy xmlns='urn:xmpp:csi:0'/>");
    assert_stream_error(&out, "unsupported-stanza-type");
}
