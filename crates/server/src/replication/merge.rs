//! What a hub wrote for a site's users while it stood in for the site goes back to the
//! site: their roster, vCard, block list, private and PEP data, archived messages. The
//! hub's store logs those writes (its log's hub form); the hub sends them to the site in
//! IQs (`<merge xmlns='urn:xmpp:outpost:replication:0'>` holding records as a batch does)
//! and drops them once the site has answered. The site merges each record only if it is
//! newer than its own write of the key and its account still exists (the merge table in
//! ARCHITECTURE.md); merging one twice changes nothing, so a batch sent again after a lost
//! answer does no harm.

use std::sync::Arc;
use std::time::Duration;

use minidom::Element;
use outpost_proto::stanza::{self, Condition, StanzaError};
use outpost_store::{ReplKind, StoreError};
use tracing::{info, warn};

use super::wire;
use crate::delivery::Delivery;

/// Log entries read for one IQ, and the bytes of records in it at most.
const BATCH_ENTRIES: u32 = 500;
const BATCH_BYTES: usize = 128 * 1024;
/// How long the site may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether an IQ merges a hub's writes (a set).
pub(super) fn is_merge(el: &Element) -> bool {
    el.name() == "iq"
        && el.attr("type") == Some("set")
        && stanza::iq_payload(el).is_some_and(|p| p.is("merge", wire::NS))
}

/// On a hub: sends `site` everything it wrote for the site's users that the site has not
/// merged yet. Returns how many records went.
pub(crate) async fn merge_back(d: &Delivery, site: &str) -> Result<usize, String> {
    let store = d.store();
    let mut sent = 0;
    loop {
        let (records, read_upto) = store
            .repl_merge_read(site, BATCH_ENTRIES)
            .await
            .map_err(|e| format!("cannot read the hub's log: {e}"))?;
        if read_upto == 0 {
            break;
        }
        let (records, upto) = wire::fit(records, read_upto, BATCH_BYTES);
        if records.is_empty() {
            // Every entry read was superseded by what the site wrote since.
            store
                .repl_merge_done(site, upto)
                .await
                .map_err(|e| format!("cannot drop what the site superseded: {e}"))?;
            continue;
        }
        let iq = wire::merge_request(&records);
        let answer = d
            .request(iq, &d.home_domain(), site, ANSWER_TIMEOUT)
            .await
            .ok_or("the site did not answer")?;
        if answer.attr("type") != Some("result") {
            let error = StanzaError::from_stanza(&answer);
            return Err(format!(
                "the site refused: {}",
                error.map_or("no reason".into(), |e| e
                    .text
                    .unwrap_or_else(|| e.condition.as_str().to_owned()))
            ));
        }
        store
            .repl_merge_done(site, upto)
            .await
            .map_err(|e| format!("cannot drop what the site merged: {e}"))?;
        sent += records.len();
    }
    if sent > 0 {
        info!(%site, records = sent, "what the hub wrote for the site's users merged back");
    }
    Ok(sent)
}

/// On a site: merges what its hub wrote for its users (the hub is authenticated as such).
pub(super) async fn merge_in(d: &Arc<Delivery>, el: &Element) -> Result<Element, StanzaError> {
    let payload = stanza::iq_payload(el).ok_or(Condition::BadRequest)?;
    let records = wire::parse_records(payload)
        .map_err(|reason| StanzaError::new(Condition::BadRequest).text(reason))?;
    let home = d.home_domain();
    if let Some(r) = records.iter().find(|r| !super::homes(&home, &r.owner)) {
        warn!(owner = %r.owner, "a merge from the hub names someone else's data: refused");
        return Err(StanzaError::new(Condition::Forbidden)
            .text(format!("{home} does not home {}", r.owner)));
    }
    match d.store().repl_merge(&records).await {
        Ok(lost) => {
            let archived = records.iter().filter(|r| r.kind == ReplKind::Archive);
            if let Some(newest) = archived.filter_map(|r| r.key.parse::<i64>().ok()).max() {
                d.archive().observe(newest);
            }
            info!(
                records = records.len(),
                lost, "merged what the hub wrote for our users while it stood in"
            );
            let mut reply = stanza::iq_result(el, el.attr("to"));
            reply.append_child(Element::builder("merge", wire::NS).build());
            Ok(reply)
        }
        Err(StoreError::Rejected(reason)) => {
            warn!(%reason, "a merge from the hub refused");
            Err(StanzaError::new(Condition::BadRequest).text(reason))
        }
        Err(e) => {
            warn!(error = %e, "cannot merge what the hub wrote");
            Err(StanzaError::new(Condition::InternalServerError))
        }
    }
}
