//! Presence that reaches a local user without coming from one of our sessions: from another
//! server (RFC 6121 §4). What a session does with its own user's presence (broadcasts,
//! probes, directed presence) is in `session::presence`.

use jid::Jid;
use minidom::Element;
use outpost_proto::stanza;

use crate::delivery::Delivery;
use crate::roster;
use crate::router::{ToSession, deliver};

/// Presence from another server for a local user: probes go to the user's available
/// resources to answer, directed and broadcast presence to the addressed resources,
/// subscription stanzas through the roster rules.
pub(crate) async fn inbound(d: &Delivery, el: Element, from: Jid, to: Jid) {
    let ty = el.attr("type").unwrap_or("").to_owned();
    match ty.as_str() {
        "probe" => {
            for (_, tx) in d.router().available(&to.to_bare()) {
                let _ = deliver(&tx, ToSession::Probe { from: from.clone() });
            }
        }
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
            let (owner, contact) = (to.to_bare(), from.to_bare());
            let mut el = el;
            // RFC 6121 §3.1.3: subscription stanzas are between bare JIDs.
            stanza::set_attr(&mut el, "from", contact.as_str());
            stanza::set_attr(&mut el, "to", owner.as_str());
            roster::apply_inbound(d, &owner, &contact, &ty, el).await;
        }
        "" | "unavailable" => {
            // A contact's client: personal eventing learns what it wants (XEP-0163 §4.3).
            if let Ok(full) = from.try_as_full()
                && d.is_local(to.domain().as_str())
            {
                if ty.is_empty() {
                    let owner = to.to_bare();
                    let server = owner.domain().as_str().to_owned();
                    crate::pep::available(d, full, &el, vec![owner], &server).await;
                } else {
                    d.caps().unavailable(full);
                }
            }
            d.presence_to(&el, &to);
        }
        // Errors only to the full JID they answer.
        "error" if to.is_full() => d.presence_to(&el, &to),
        _ => {}
    }
}
