//! Messages a hub stored for a site's users while it stood in for the site (users who were
//! not online at the hub) go back to the site once it is back, so that they reach the users
//! at home: nothing accepted is left behind at the hub.
//!
//! The hub sends them in IQs (`<handback xmlns='urn:xmpp:outpost:replication:0'>` holding
//! the stored `<message/>` stanzas) to the site's domain, and deletes them once the site has
//! answered. The site takes them only from its own hub, only for its own users, and
//! delivers each as a message from its sender would be (to an online session, or to the
//! offline store, archived); it records a digest of each stanza as a seen id, so one sent
//! again after a lost answer is not delivered twice.

use std::sync::Arc;
use std::time::Duration;

use jid::Jid;
use minidom::Element;
use outpost_proto::stanza::{self, Condition, StanzaError};
use outpost_store::BatchWrite;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::wire::NS;
use crate::delivery::{Accepted, Delivery};

/// Messages in one IQ at most, and their bytes.
const BATCH_MESSAGES: u32 = 50;
const BATCH_BYTES: usize = 128 * 1024;
/// How long the site may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the hub looks again for messages left to hand back, besides when a standby
/// ends.
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// Whether an IQ hands messages back (a set: its answer carries the same element).
pub(super) fn is_handback(el: &Element) -> bool {
    el.name() == "iq"
        && el.attr("type") == Some("set")
        && stanza::iq_payload(el).is_some_and(|p| p.is("handback", NS))
}

/// On a hub: merges back what it wrote for `site`'s users and hands their messages back
/// whenever it does not stand in for the site, at start, after each standby and every
/// [`LOOK_AGAIN`], until shutdown (on a cluster, on the node that runs the link to the
/// site).
pub(crate) async fn run(d: Arc<Delivery>, site: String, shutdown: CancellationToken) {
    loop {
        // Listening before looking: a standby that ends while the hub hands back is not
        // missed.
        let ended = d.standby().ended().notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        // On a cluster, the node that runs the link to the site hands back (the others
        // would send the same again); the link is not taken for nothing to send.
        if !d.standby().is_active(&site)
            && owes(&d, &site).await
            && d.runs_link(&d.home_domain(), &site).await
        {
            if let Err(reason) = super::merge::merge_back(&d, &site).await {
                debug!(%site, %reason, "what the hub wrote for the site's users waits");
            }
            if let Err(reason) = hand_back(&d, &site).await {
                debug!(%site, %reason, "messages for the site wait at the hub");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = &mut ended => {}
            () = tokio::time::sleep(LOOK_AGAIN) => {}
        }
    }
}

/// Whether the hub has anything to merge back into `site` or hand back to it (or cannot
/// tell: the store did not answer, and the attempt will say why).
async fn owes(d: &Delivery, site: &str) -> bool {
    let store = d.store();
    let merge = store
        .repl_merge_read(site, 1)
        .await
        .map(|(_, upto)| upto != 0);
    let messages = store.offline_owners(site).await.map(|o| !o.is_empty());
    merge.unwrap_or(true) || messages.unwrap_or(true)
}

/// Hands back every message the hub stored for `site`'s users (not the site's own it keeps
/// a replica of).
pub(super) async fn hand_back(d: &Delivery, site: &str) -> Result<(), String> {
    let store = d.store();
    let owners = store
        .offline_owners(site)
        .await
        .map_err(|e| e.to_string())?;
    for user in owners {
        loop {
            let messages = store
                .offline_own(&user, BATCH_MESSAGES)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = messages.last().map(|m| m.id) else {
                break;
            };
            let mut payload = Element::builder("handback", NS).build();
            let (mut size, mut up_to) = (0, last);
            for m in &messages {
                if size > 0 && size + m.stanza.len() > BATCH_BYTES {
                    break;
                }
                match m.stanza.parse::<Element>() {
                    Ok(el) => {
                        payload.append_child(el);
                    }
                    Err(e) => warn!(%user, error = %e, "a stored message does not parse; dropped"),
                }
                size += m.stanza.len();
                up_to = m.id;
            }
            let iq = Element::builder("iq", stanza::ns::CLIENT)
                .attr(stanza::name("type"), "set")
                .append(payload)
                .build();
            let home = d.home_domain();
            let answer = d
                .request(iq, &home, site, ANSWER_TIMEOUT)
                .await
                .ok_or("the site did not answer")?;
            if answer.attr("type") != Some("result") {
                return Err(format!("the site refused: {}", String::from(&answer)));
            }
            store
                .delete_offline_own(&user, up_to)
                .await
                .map_err(|e| e.to_string())?;
            info!(%user, "messages stored at the hub handed back to the site");
        }
    }
    Ok(())
}

/// On a site: takes back the messages its hub (`from`) stored for its users.
pub(super) async fn take_back(
    d: &Delivery,
    el: &Element,
    from: &str,
) -> Result<Element, StanzaError> {
    let payload = stanza::iq_payload(el).ok_or(Condition::BadRequest)?;
    let mut accepted = Accepted::default();
    for message in payload.children().filter(|c| c.name() == "message") {
        accepted.join(take_one(d, message.clone(), from).await);
    }
    for failed in accepted.settle().await {
        warn!(error = %failed.error, "a message handed back could not be delivered");
    }
    let mut reply = stanza::iq_result(el, el.attr("to"));
    reply.append_child(Element::builder("handback", NS).build());
    Ok(reply)
}

/// Delivers one handed-back message to its local recipient, once.
async fn take_one(d: &Delivery, el: Element, hub: &str) -> Accepted {
    let to = el.attr("to").and_then(|t| Jid::new(t).ok());
    let Some(to) = to.filter(|t| t.node().is_some() && d.is_home(t.domain().as_str())) else {
        warn!(
            to = el.attr("to"),
            "a message handed back is not for one of our users; dropped"
        );
        return Accepted::default();
    };
    let digest = hex(&Sha256::digest(String::from(&el).as_bytes()));
    let id = format!("handback-{digest}");
    match d.store().stanza_id_seen(hub, &id).await {
        Ok(true) => return Accepted::default(),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot check a handed-back message; delivering it"),
    }
    // Archived at the hub (its stanza-id names the recipient's archive): the merge brings
    // the archive row, under the same id.
    let bare = to.to_bare();
    let archived = el
        .children()
        .any(|c| c.is("stanza-id", stanza::ns::SID) && c.attr("by") == Some(bare.as_str()));
    let delivered = match archived {
        true => d.handed_back(el, to).await,
        false => d.message(el, to).await,
    };
    let mut accepted = match delivered {
        Ok(accepted) => accepted,
        Err(u) => {
            warn!(error = %u.error, "a message handed back could not be delivered");
            Accepted::default()
        }
    };
    let seen = BatchWrite::Seen {
        origin: hub.to_owned(),
        id,
    };
    accepted.join(Accepted::logged(d.journal().submit(seen).await));
    accepted
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
