//! Message archive management (XEP-0313 v1.1, `urn:xmpp:mam:2`) for the user's own
//! archive: queries by contact, time and id with result set paging (XEP-0059), the
//! extended fields (`before-id`, `after-id`, `ids`) and metadata, archiving preferences
//! (XEP-0441), and the retention period's upkeep.
//!
//! Paging follows what clients rely on: a page is at most `max` messages (50 when not
//! given, never more than [`MAX_PAGE`]); `<after>` pages forwards, `<before>` (empty for
//! the last page) backwards, and a page is always sent oldest first unless the client asks
//! for `<flip-page/>`; one message more than asked is read to tell whether the page is the
//! last one (`complete`); a cursor that names no message of the archive is `item-not-found`,
//! which clients use to notice that their cursor went stale.

use std::sync::Arc;
use std::time::Duration;

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::forms::{Form, Submitted};
use outpost_proto::stanza::{self, Condition, StanzaError, ns};
use outpost_store::{ArchiveDefault, ArchivePrefs, ArchiveQuery, ArchivedMessage};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive;
use crate::delivery::Delivery;
use crate::services::IqAnswer;

/// Messages in a page when the client does not say.
const DEFAULT_PAGE: u32 = 50;
/// The most messages in one page, whatever the client asks.
pub(crate) const MAX_PAGE: u32 = 250;
/// How often old messages are removed, and how many per store call.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);
const EXPIRY_BATCH: u32 = 5000;

/// What an archive query produced: the result messages, then the final IQ result.
pub(crate) struct Answer {
    pub(crate) results: Vec<Element>,
    pub(crate) fin: Element,
}

/// Which messages a query asks for, once its form and paging are read.
struct Wanted {
    with: Option<String>,
    /// Open bounds on ids, from `start`/`end`, `after-id`/`before-id` and the RSM cursor.
    after: Option<i64>,
    before: Option<i64>,
    /// Ids asked for one by one (`ids`).
    ids: Option<Vec<i64>>,
    max: u32,
    /// Paging backwards from `before` (RSM `<before/>`).
    backwards: bool,
    flip: bool,
}

/// An archive query (`<query xmlns='urn:xmpp:mam:2'/>`, type `set`) on `owner`'s archive,
/// from `requester`. `with_as_given`: match `with` as written (an occupant JID in a room's
/// archive) rather than its bare JID.
pub(crate) async fn query(
    d: &Delivery,
    owner: &str,
    requester: &Jid,
    request: &Element,
    with_as_given: bool,
) -> Result<Answer, StanzaError> {
    let q = request
        .get_child("query", ns::MAM)
        .ok_or(Condition::BadRequest)?;
    let wanted = wanted(q, with_as_given)?;
    // A message routed before this query may still be on its way to the disk; the
    // client that saw its stanza-id must find it. (Delivery queues the row right after
    // handing the message to the recipient's session, without waiting in between, so a
    // query a network round trip behind the message comes after the row in the journal.)
    d.journal().barrier().await;
    let store = d.store();
    for cursor in [wanted.after, wanted.before].into_iter().flatten() {
        // Cursors from `start`/`end` need not name a message; the others must.
        if cursor_named(q, cursor) && !has_soon(d, owner, cursor).await? {
            return Err(Condition::ItemNotFound.into());
        }
    }
    let (mut page, complete) = match &wanted.ids {
        Some(ids) => (by_ids(d, owner, ids).await?, true),
        None => {
            let asked = ArchiveQuery {
                owner,
                with: wanted.with.as_deref(),
                after: wanted.after,
                before: wanted.before,
                limit: wanted.max + 1,
                newest_first: wanted.backwards,
            };
            let mut page = store
                .archive_page(&asked)
                .await
                .map_err(|e| internal("cannot read the archive", e))?;
            let complete = page.len() <= wanted.max as usize;
            page.truncate(wanted.max as usize);
            if wanted.backwards {
                page.reverse();
            }
            (page, complete)
        }
    };
    if wanted.flip {
        page.reverse();
    }
    let query_id = q.attr("queryid");
    let results = page
        .iter()
        .filter_map(|m| result_message(m, owner, requester, query_id))
        .collect();
    Ok(Answer {
        results,
        fin: fin(request, &page, complete),
    })
}

/// Whether the paging cursor `id` came from the client's RSM `<after>`/`<before>` or the
/// `after-id`/`before-id` fields (which must name a message), not from a time.
fn cursor_named(q: &Element, id: i64) -> bool {
    let rsm = q.get_child("set", ns::RSM);
    let rsm_ids = ["after", "before"]
        .iter()
        .filter_map(|n| rsm?.get_child(n, ns::RSM))
        .filter_map(|c| archive::decode_id(c.text().trim()));
    let form = q.get_child("x", ns::DATA_FORMS).and_then(Submitted::parse);
    let form_ids = ["after-id", "before-id"]
        .iter()
        .filter_map(|v| form.as_ref()?.first(v))
        .filter_map(|t| archive::decode_id(t.trim()));
    rsm_ids.chain(form_ids).any(|c| c == id)
}

/// [`has`], and on an archive other nodes of a cluster write to, a recent id that is not
/// there yet is looked for again for a moment: the message may have been routed here by
/// another node whose commit is still under way (the barrier above covers only ours).
async fn has_soon(d: &Delivery, owner: &str, id: i64) -> Result<bool, StanzaError> {
    const RECENT_MS: i64 = 10_000;
    const WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    if has(d, owner, id).await? {
        return Ok(true);
    }
    let recent = crate::clock::now_ms() - archive::time_of(id) < RECENT_MS;
    if !(d.archive().shared() && recent) {
        return Ok(false);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        // The other node's group commit takes milliseconds; nothing announces it here.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if has(d, owner, id).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn has(d: &Delivery, owner: &str, id: i64) -> Result<bool, StanzaError> {
    d.store()
        .archive_has(owner, id)
        .await
        .map_err(|e| internal("cannot read the archive", e))
}

/// The messages named by `ids`, in the order asked; an id the archive does not hold is
/// `item-not-found` (XEP-0313 §4.1.3).
async fn by_ids(
    d: &Delivery,
    owner: &str,
    ids: &[i64],
) -> Result<Vec<ArchivedMessage>, StanzaError> {
    let mut found = Vec::with_capacity(ids.len());
    for &id in ids {
        let one = ArchiveQuery {
            owner,
            with: None,
            after: Some(id - 1),
            before: Some(id + 1),
            limit: 1,
            newest_first: false,
        };
        let mut page = d
            .store()
            .archive_page(&one)
            .await
            .map_err(|e| internal("cannot read the archive", e))?;
        found.push(page.pop().ok_or(Condition::ItemNotFound)?);
    }
    Ok(found)
}

/// Reads the query's form and paging (XEP-0313 §4.1, XEP-0059 §2).
fn wanted(q: &Element, with_as_given: bool) -> Result<Wanted, StanzaError> {
    let bad = |text: &str| StanzaError::new(Condition::BadRequest).text(text);
    let mut w = Wanted {
        with: None,
        after: None,
        before: None,
        ids: None,
        max: DEFAULT_PAGE,
        backwards: false,
        flip: q.has_child("flip-page", ns::MAM),
    };
    if let Some(form) = q.get_child("x", ns::DATA_FORMS).and_then(Submitted::parse) {
        if form.form_type().is_some_and(|t| t != ns::MAM) {
            return Err(bad("unknown FORM_TYPE"));
        }
        read_form(&form, with_as_given, &mut w).map_err(|e| bad(&e))?;
    }
    if let Some(set) = q.get_child("set", ns::RSM) {
        if let Some(max) = set.get_child("max", ns::RSM) {
            w.max = max
                .text()
                .trim()
                .parse::<u32>()
                .map_err(|_| bad("max is not a number"))?;
        }
        let cursor = |c: &Element| {
            archive::decode_id(c.text().trim()).ok_or(StanzaError::new(Condition::ItemNotFound))
        };
        if let Some(after) = set.get_child("after", ns::RSM) {
            narrow_after(&mut w.after, cursor(after)?);
        }
        if let Some(before) = set.get_child("before", ns::RSM) {
            w.backwards = true;
            if !before.text().trim().is_empty() {
                narrow_before(&mut w.before, cursor(before)?);
            }
        }
    }
    w.max = w.max.min(MAX_PAGE);
    Ok(w)
}

/// The fields of the query form: `with`, `start`, `end`, `after-id`, `before-id`, `ids`.
fn read_form(form: &Submitted, with_as_given: bool, w: &mut Wanted) -> Result<(), String> {
    if let Some(with) = form.first("with") {
        let jid = Jid::new(with.trim()).map_err(|_| format!("with: `{with}` is not a JID"))?;
        w.with = Some(match with_as_given {
            true => jid.to_string(),
            false => jid.to_bare().to_string(),
        });
    }
    if let Some(start) = form.first("start") {
        narrow_after(&mut w.after, archive::id_at(parse_time(start)?) - 1);
    }
    if let Some(end) = form.first("end") {
        narrow_before(
            &mut w.before,
            archive::id_at(parse_time(end)?.saturating_add(1)),
        );
    }
    let id = |t: &str| archive::decode_id(t.trim()).ok_or_else(|| format!("`{t}` is not an id"));
    if let Some(after) = form.first("after-id") {
        narrow_after(&mut w.after, id(after)?);
    }
    if let Some(before) = form.first("before-id") {
        narrow_before(&mut w.before, id(before)?);
    }
    if let Some(ids) = form.values("ids") {
        let ids: Result<Vec<i64>, String> = ids.iter().map(|t| id(t)).collect();
        w.ids = Some(ids?);
    }
    Ok(())
}

fn narrow_after(bound: &mut Option<i64>, id: i64) {
    *bound = Some(bound.map_or(id, |b| b.max(id)));
}

fn narrow_before(bound: &mut Option<i64>, id: i64) {
    *bound = Some(bound.map_or(id, |b| b.min(id)));
}

/// An XEP-0082 date-time, to Unix milliseconds.
fn parse_time(text: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map_err(|_| format!("`{text}` is not an XEP-0082 date and time"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| "time out of range".into())
}

/// One `<result/>` message carrying an archived message (XEP-0313 §4.2).
fn result_message(
    m: &ArchivedMessage,
    owner: &str,
    requester: &Jid,
    query_id: Option<&str>,
) -> Option<Element> {
    let original: Element = m.stanza.parse().ok()?;
    let delay = Element::builder("delay", ns::DELAY)
        .attr(
            stanza::name("stamp"),
            crate::clock::format_ms(archive::time_of(m.id)),
        )
        .build();
    let forwarded = Element::builder("forwarded", ns::FORWARD)
        .append(delay)
        .append(original)
        .build();
    let mut result = Element::builder("result", ns::MAM)
        .attr(stanza::name("id"), archive::encode_id(m.id))
        .append(forwarded)
        .build();
    if let Some(q) = query_id {
        stanza::set_attr(&mut result, "queryid", q);
    }
    Some(
        Element::builder("message", ns::CLIENT)
            .attr(stanza::name("from"), owner)
            .attr(stanza::name("to"), requester.as_str())
            .attr(stanza::name("id"), crate::ids::random_id(12))
            .append(result)
            .build(),
    )
}

/// The IQ result that ends a query: whether the page is the last, and its first and last
/// ids (XEP-0313 §4.3, XEP-0059 §2.6).
fn fin(request: &Element, page: &[ArchivedMessage], complete: bool) -> Element {
    let mut set = Element::builder("set", ns::RSM).build();
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        set.append_child(
            Element::builder("first", ns::RSM)
                .append(archive::encode_id(first.id))
                .build(),
        );
        set.append_child(
            Element::builder("last", ns::RSM)
                .append(archive::encode_id(last.id))
                .build(),
        );
    } else {
        set.append_child(Element::builder("count", ns::RSM).append("0").build());
    }
    let mut fin = Element::builder("fin", ns::MAM).append(set).build();
    if complete {
        stanza::set_attr(&mut fin, "complete", "true");
    }
    let mut reply = stanza::iq_result(request, request.attr("to"));
    reply.append_child(fin);
    reply
}

/// The query form (XEP-0313 §5.1): what a client may filter on.
pub(crate) fn form_reply(request: &Element) -> Element {
    let form = Form::new("form", ns::MAM)
        .field("with", "jid-single", None, &[])
        .field("start", "text-single", None, &[])
        .field("end", "text-single", None, &[])
        .field("before-id", "text-single", None, &[])
        .field("after-id", "text-single", None, &[])
        .field("ids", "list-multi", None, &[])
        .build();
    let mut reply = stanza::iq_result(request, request.attr("to"));
    reply.append_child(Element::builder("query", ns::MAM).append(form).build());
    reply
}

/// The archive's first and last message (XEP-0313 §6.1.2).
pub(crate) async fn metadata(d: &Delivery, owner: &str, request: &Element) -> IqAnswer {
    let bounds = d
        .store()
        .archive_bounds(owner)
        .await
        .map_err(|e| internal("cannot read the archive", e))?;
    let mut meta = Element::builder("metadata", ns::MAM).build();
    if let Some((first, last)) = bounds {
        for (name, id) in [("start", first), ("end", last)] {
            meta.append_child(
                Element::builder(name, ns::MAM)
                    .attr(stanza::name("id"), archive::encode_id(id))
                    .attr(
                        stanza::name("timestamp"),
                        crate::clock::format_ms(archive::time_of(id)),
                    )
                    .build(),
            );
        }
    }
    let mut reply = stanza::iq_result(request, request.attr("to"));
    reply.append_child(meta);
    Ok(reply)
}

/// Reads or sets the user's archiving preferences (XEP-0441 §2).
pub(crate) async fn prefs(d: &Delivery, user: &BareJid, request: &Element) -> IqAnswer {
    let store = d.store();
    let current = if request.attr("type") == Some("set") {
        let el = request
            .get_child("prefs", ns::MAM)
            .ok_or(Condition::BadRequest)?;
        let prefs = parse_prefs(el)?;
        store
            .set_archive_prefs(user.as_str(), &prefs)
            .await
            .map_err(|e| internal("cannot store archive preferences", e))?;
        let stored = store
            .archive_prefs(user.as_str())
            .await
            .map_err(|e| internal("cannot read archive preferences", e))?;
        d.archive().changed(user.as_str(), stored.clone()).await;
        stored
    } else {
        d.archive().prefs(user.as_str()).map(|p| (*p).clone())
    };
    let prefs = current.unwrap_or(ArchivePrefs {
        default: ArchiveDefault::Always,
        always: Vec::new(),
        never: Vec::new(),
    });
    let mut reply = stanza::iq_result(request, None);
    reply.append_child(prefs_element(&prefs));
    Ok(reply)
}

fn parse_prefs(el: &Element) -> Result<ArchivePrefs, StanzaError> {
    let default = el
        .attr("default")
        .and_then(ArchiveDefault::parse)
        .ok_or_else(|| StanzaError::new(Condition::BadRequest).text("default is required"))?;
    let list = |name: &str| -> Result<Vec<String>, StanzaError> {
        let Some(list) = el.get_child(name, ns::MAM) else {
            return Ok(Vec::new());
        };
        list.children()
            .filter(|c| c.is("jid", ns::MAM))
            .map(|c| {
                BareJid::new(c.text().trim())
                    .map(|j| j.to_string())
                    .map_err(|_| Condition::JidMalformed.into())
            })
            .collect()
    };
    Ok(ArchivePrefs {
        default,
        always: list("always")?,
        never: list("never")?,
    })
}

fn prefs_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut el = Element::builder(name, ns::MAM).build();
        for j in jids {
            el.append_child(Element::builder("jid", ns::MAM).append(j.as_str()).build());
        }
        el
    };
    Element::builder("prefs", ns::MAM)
        .attr(stanza::name("default"), p.default.as_str())
        .append(list("always", &p.always))
        .append(list("never", &p.never))
        .build()
}

fn internal(what: &str, e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "{what}");
    StanzaError::new(Condition::InternalServerError)
}

/// Removes messages older than the retention period, hourly, until shutdown.
pub(crate) async fn expire_old(d: Arc<Delivery>, shutdown: CancellationToken) {
    loop {
        let days = d.archive().retention_days();
        if days > 0 {
            let cutoff = crate::clock::now_ms() - i64::from(days) * 24 * 3600 * 1000;
            let mut removed = 0;
            loop {
                match d
                    .store()
                    .archive_expire(archive::id_at(cutoff), EXPIRY_BATCH)
                    .await
                {
                    Ok(n) => {
                        removed += n;
                        if n < u64::from(EXPIRY_BATCH) {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot remove old archived messages");
                        break;
                    }
                }
            }
            if removed > 0 {
                info!(
                    removed,
                    days, "archived messages past the retention period removed"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EXPIRY_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn paging_and_form_fields_become_bounds() {
        let a = archive::encode_id(1000);
        let b = archive::encode_id(2000);
        let w = wanted(
            &q(&format!(
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
                 <field var='with'><value>juliet@capulet.lit/balcony</value></field>\
                 <field var='after-id'><value>{a}</value></field></x>\
                 <set xmlns='http://jabber.org/protocol/rsm'><max>1000</max>\
                 <before>{b}</before></set><flip-page/></query>"
            )),
            false,
        )
        .unwrap();
        assert_eq!(w.with.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!((w.after, w.before), (Some(1000), Some(2000)));
        assert_eq!(w.max, MAX_PAGE);
        assert!(w.backwards && w.flip);

        let w = wanted(
            &q(
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
                <field var='end'><value>2010-07-07T13:23:54.250Z</value></field></x>\
                <set xmlns='http://jabber.org/protocol/rsm'><before/></set></query>",
            ),
            false,
        )
        .unwrap();
        let start = 1_275_868_800_000;
        let end = 1_278_509_034_250;
        assert_eq!(w.after, Some(archive::id_at(start) - 1));
        assert_eq!(w.before, Some(archive::id_at(end + 1)));
        assert!(w.backwards && w.before.is_some());
        assert_eq!(w.max, DEFAULT_PAGE);
    }

    #[test]
    fn bad_queries_are_refused() {
        for (xml, condition) in [
            (
                "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
                 <after>not-ours</after></set></query>",
                Condition::ItemNotFound,
            ),
            (
                "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>\
                 <max>-1</max></set></query>",
                Condition::BadRequest,
            ),
            (
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='start'><value>yesterday</value></field></x></query>",
                Condition::BadRequest,
            ),
            (
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x></query>",
                Condition::BadRequest,
            ),
        ] {
            let e = wanted(&q(xml), false).err().expect(xml);
            assert_eq!(e.condition, condition, "{xml}");
        }
    }

    #[test]
    fn times_round_trip_to_the_millisecond() {
        let ms = 1_700_000_000_123;
        assert_eq!(parse_time(&crate::clock::format_ms(ms)), Ok(ms));
        assert_eq!(crate::clock::format_ms(ms), "2023-11-14T22:13:20.123Z");
    }
}
