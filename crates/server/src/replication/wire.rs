//! The replication protocol between a site and its hub, an Outpost extension carried in
//! IQs over the authenticated server-to-server link:
//!
//! ```xml
//! <!-- Where does the hub's replica of my domain stand? (My log is at `head`.) -->
//! <iq type='get' from='site1.example' to='hub.example' id='…'>
//!   <sync xmlns='urn:xmpp:outpost:replication:0' epoch='…' head='60'/>
//! </iq>
//! <!-- A batch: the records after position `after`, up to `upto`. -->
//! <iq type='set' from='site1.example' to='hub.example' id='…'>
//!   <sync xmlns='urn:xmpp:outpost:replication:0' epoch='…' after='40' upto='52' head='60'>
//!     <r seq='41' stamp='…' kind='roster' owner='alice@site1.example' key='bob@…'>{json}</r>
//!     <r seq='44' stamp='…' kind='block' owner='alice@site1.example' key='…' gone='true'/>
//!   </sync>
//! </iq>
//! <!-- Either answer: where the replica stands, and whether the batch was applied. -->
//! <iq type='result' …><position xmlns='…' epoch='…' position='52' applied='true'/></iq>
//! ```
//!
//! A `snapshot='true'` batch tells the hub to drop what it holds for the domain first.
//!
//! The other way, a hub sends a site what it wrote for the site's users while standing in,
//! records as in a batch, answered with an empty `<merge/>`:
//!
//! ```xml
//! <iq type='set' from='hub.example' to='site1.example' id='…'>
//!   <merge xmlns='urn:xmpp:outpost:replication:0'><r …>{json}</r></merge>
//! </iq>
//! ```

use minidom::Element;
use outpost_proto::stanza::{self, name, ns};
use outpost_store::{ReplKind, ReplOrigin, ReplRecord};

pub(crate) const NS: &str = "urn:xmpp:outpost:replication:0";

/// A batch as it travels.
#[derive(Debug, PartialEq)]
pub(crate) struct Sync {
    pub(crate) epoch: String,
    pub(crate) after: i64,
    pub(crate) upto: i64,
    pub(crate) head: i64,
    pub(crate) snapshot: bool,
    pub(crate) records: Vec<ReplRecord>,
}

/// The hub's answer.
#[derive(Debug, PartialEq)]
pub(crate) struct Position {
    pub(crate) epoch: String,
    pub(crate) position: i64,
    pub(crate) applied: bool,
    /// The hub cannot take the snapshot yet: it merges its own writes back first.
    pub(crate) wait: bool,
}

fn iq(kind: &str, payload: Element) -> Element {
    Element::builder("iq", ns::CLIENT)
        .attr(name("type"), kind)
        .append(payload)
        .build()
}

/// The question where the replica stands, from a site whose log `epoch` is at `head`.
pub(crate) fn status_request(epoch: &str, head: i64) -> Element {
    let sync = Element::builder("sync", NS)
        .attr(name("epoch"), epoch)
        .attr(name("head"), head.to_string())
        .build();
    iq("get", sync)
}

/// The site's epoch and head in a status request, if it says them.
pub(crate) fn parse_status(el: &Element) -> Option<(&str, i64)> {
    Some((el.attr("epoch")?, el.attr("head")?.parse().ok()?))
}

/// The IQ carrying a batch.
pub(crate) fn sync_request(sync: &Sync) -> Element {
    let mut el = Element::builder("sync", NS)
        .attr(name("epoch"), sync.epoch.as_str())
        .attr(name("after"), sync.after.to_string())
        .attr(name("upto"), sync.upto.to_string())
        .attr(name("head"), sync.head.to_string())
        .build();
    if sync.snapshot {
        stanza::set_attr(&mut el, "snapshot", "true");
    }
    for r in &sync.records {
        el.append_child(record(r));
    }
    iq("set", el)
}

fn record(r: &ReplRecord) -> Element {
    let mut el = Element::builder("r", NS)
        .attr(name("seq"), r.seq.to_string())
        .attr(name("stamp"), r.stamp.to_string())
        .attr(name("kind"), r.kind.as_str())
        .attr(name("owner"), r.owner.as_str())
        .build();
    if !r.key.is_empty() {
        stanza::set_attr(&mut el, "key", &r.key);
    }
    if !r.sub.is_empty() {
        stanza::set_attr(&mut el, "sub", &r.sub);
    }
    match &r.value {
        Some(value) => el.append_text_node(value.as_str()),
        None => stanza::set_attr(&mut el, "gone", "true"),
    }
    el
}

/// How many bytes a record takes on the wire, at most: each character that may be
/// escaped counted as an entity (`<`, `>` and `&` in text; quotes too in attributes).
pub(crate) fn record_size(r: &ReplRecord) -> usize {
    let sized =
        |s: &str, special: &[u8]| s.len() + 5 * s.bytes().filter(|b| special.contains(b)).count();
    let attribute = |s: &str| sized(s, b"<>&'\"\t\n\r");
    let value = r.value.as_deref().map_or(0, |v| sized(v, b"<>&\r"));
    160 + attribute(&r.owner) + attribute(&r.key) + attribute(&r.sub) + value
}

fn number(el: &Element, attr: &str) -> Result<i64, String> {
    el.attr(attr)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("<{}/> needs a number in '{attr}'", el.name()))
}

/// The IQ carrying a hub's writes back to the site.
pub(crate) fn merge_request(records: &[ReplRecord]) -> Element {
    let mut el = Element::builder("merge", NS).build();
    for r in records {
        el.append_child(record(r));
    }
    iq("set", el)
}

/// Cuts records read up to log position `upto` to `bytes` on the wire; returns those that
/// fit and the position they reach (a repeat of a key comes once, at its first position, so
/// every entry before a record left out is in).
pub(crate) fn fit(records: Vec<ReplRecord>, upto: i64, bytes: usize) -> (Vec<ReplRecord>, i64) {
    let mut size = 0;
    let mut kept = Vec::with_capacity(records.len());
    for r in records {
        let len = record_size(&r);
        if size + len > bytes && !kept.is_empty() {
            return (kept, r.seq - 1);
        }
        size += len;
        kept.push(r);
    }
    (kept, upto)
}

/// The records in a batch or a merge.
pub(crate) fn parse_records(el: &Element) -> Result<Vec<ReplRecord>, String> {
    el.children()
        .filter(|c| c.is("r", NS))
        .map(parse_record)
        .collect()
}

/// Reads a batch (the payload of an IQ set).
pub(crate) fn parse_sync(el: &Element) -> Result<Sync, String> {
    let records = parse_records(el)?;
    Ok(Sync {
        epoch: el
            .attr("epoch")
            .ok_or("<sync/> needs an 'epoch'")?
            .to_owned(),
        after: number(el, "after")?,
        upto: number(el, "upto")?,
        head: number(el, "head")?,
        snapshot: el.attr("snapshot") == Some("true"),
        records,
    })
}

fn parse_record(el: &Element) -> Result<ReplRecord, String> {
    let kind = el.attr("kind").unwrap_or("");
    let kind = ReplKind::parse(kind).ok_or_else(|| format!("unknown record kind '{kind}'"))?;
    let gone = el.attr("gone") == Some("true");
    Ok(ReplRecord {
        seq: number(el, "seq")?,
        stamp: number(el, "stamp")?,
        kind,
        owner: el.attr("owner").ok_or("<r/> needs an 'owner'")?.to_owned(),
        key: el.attr("key").unwrap_or("").to_owned(),
        sub: el.attr("sub").unwrap_or("").to_owned(),
        value: (!gone).then(|| el.text()),
    })
}

/// The hub's answer: where its replica stands.
pub(crate) fn position(origin: &ReplOrigin, applied: bool) -> Element {
    Element::builder("position", NS)
        .attr(name("epoch"), origin.epoch.as_str())
        .attr(name("position"), origin.position.to_string())
        .attr(name("applied"), if applied { "true" } else { "false" })
        .build()
}

/// The hub's answer to a snapshot it cannot take before it has merged its own writes
/// back: `wait='true'`.
pub(crate) fn wait(origin: &ReplOrigin) -> Element {
    let mut el = position(origin, false);
    stanza::set_attr(&mut el, "wait", "true");
    el
}

/// Reads the hub's answer (an IQ result).
pub(crate) fn parse_position(iq: &Element) -> Option<Position> {
    let p = iq.get_child("position", NS)?;
    Some(Position {
        epoch: p.attr("epoch")?.to_owned(),
        position: p.attr("position")?.parse().ok()?,
        applied: p.attr("applied") == Some("true"),
        wait: p.attr("wait") == Some("true"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sync {
        Sync {
            epoch: "e1".to_owned(),
            after: 3,
            upto: 9,
            head: 12,
            snapshot: true,
            records: vec![
                ReplRecord {
                    seq: 4,
                    stamp: 77,
                    kind: ReplKind::Vcard,
                    owner: "alice@site1.test".to_owned(),
                    key: String::new(),
                    sub: String::new(),
                    value: Some(r#"{"vcard":"<vCard xmlns='vcard-temp'>&amp;</vCard>"}"#.into()),
                },
                ReplRecord {
                    seq: 9,
                    stamp: 78,
                    kind: ReplKind::PepItem,
                    owner: "alice@site1.test".to_owned(),
                    key: "urn:xmpp:omemo:2:bundles".to_owned(),
                    sub: "31415".to_owned(),
                    value: None,
                },
            ],
        }
    }

    #[test]
    fn a_batch_reads_back_as_it_was_written_through_xml() {
        let sync = sample();
        let iq = sync_request(&sync);
        let text = String::from(&iq);
        let parsed: Element = text.parse().expect("well-formed");
        let payload = stanza::iq_payload(&parsed).expect("payload");
        assert_eq!(parse_sync(payload).unwrap(), sync);
    }

    #[test]
    fn a_malformed_batch_is_refused_with_a_reason() {
        let mut iq = sync_request(&sample());
        let payload = iq.children_mut().next().unwrap();
        stanza::remove_attr(payload, "upto");
        assert!(parse_sync(payload).unwrap_err().contains("upto"));
        let bad: Element = format!("<sync xmlns='{NS}' epoch='e' after='0' upto='1' head='1'><r seq='1' stamp='1' kind='password' owner='a@b'/></sync>")
            .parse()
            .unwrap();
        assert!(parse_sync(&bad).unwrap_err().contains("password"));
    }

    #[test]
    fn a_records_size_bounds_what_it_takes_on_the_wire() {
        for r in sample().records {
            let text = String::from(&record(&r));
            assert!(
                text.len() <= record_size(&r),
                "{} > {}: {text}",
                text.len(),
                record_size(&r)
            );
        }
    }

    #[test]
    fn the_position_answer_round_trips() {
        let origin = ReplOrigin {
            epoch: "e".to_owned(),
            position: 42,
            ..ReplOrigin::default()
        };
        let answer = iq("result", position(&origin, true));
        assert_eq!(
            parse_position(&answer),
            Some(Position {
                epoch: "e".to_owned(),
                position: 42,
                applied: true,
                wait: false,
            })
        );
    }
}
