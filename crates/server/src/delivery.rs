//! Delivery to local users, shared by client sessions and server-to-server links: message
//! routing (RFC 6121 §8.5), the offline store (XEP-0160), and error replies to senders
//! wherever they are.
//!
//! Nothing here needs a client session: a function that cannot deliver hands back a
//! [`Bounce`] and the caller decides how its sender hears of it (a session answers its own
//! client directly; everyone else goes through [`bounce`]).

use std::sync::Arc;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, ns};
use outpost_store::StoreError;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::warn;

use crate::Shared;
use crate::router::{ToSession, Undelivered, deliver};

/// A stanza that could not be delivered, and the error its sender should get.
pub(crate) struct Bounce {
    pub(crate) el: Element,
    pub(crate) error_type: &'static str,
    pub(crate) condition: &'static str,
}

fn bounced(el: Element, error_type: &'static str, condition: &'static str) -> Option<Bounce> {
    Some(Bounce {
        el,
        error_type,
        condition,
    })
}

/// Delivers a message to a local address: to the full JID if bound, else by the bare JID
/// rules, else to the offline store. Online delivery touches no storage.
pub(crate) async fn route_message(shared: &Arc<Shared>, el: Element, to: Jid) -> Option<Bounce> {
    let ty = stanza::stanza_type(&el).to_owned();
    let bare = to.to_bare();
    let el = match to.try_as_full() {
        Ok(full) => match shared.router.send_to_full(full, ToSession::Stanza(el)) {
            Ok(()) => return None,
            Err(Undelivered::Full(ToSession::Stanza(el))) => {
                // The resource is bound but not reading: keep the message for later.
                return store_offline(shared, el, &bare).await;
            }
            Err(Undelivered::NotBound(ToSession::Stanza(el))) => match ty.as_str() {
                // RFC 6121 §8.5.3.2.1: no such resource.
                "groupchat" => return bounced(el, "cancel", "service-unavailable"),
                "headline" | "error" => return None,
                // chat and normal go on as if sent to the bare JID.
                _ => el,
            },
            Err(_) => return None,
        },
        Err(_) => el,
    };
    route_to_bare(shared, el, bare, &ty).await
}

async fn route_to_bare(
    shared: &Arc<Shared>,
    el: Element,
    bare: BareJid,
    ty: &str,
) -> Option<Bounce> {
    if ty == "groupchat" {
        return bounced(el, "cancel", "service-unavailable");
    }
    let targets = shared.router.message_targets(&bare, ty == "headline");
    let mut rest = Some(el);
    let mut delivered = false;
    for (i, (_, tx)) in targets.iter().enumerate() {
        let Some(el) = rest.take() else { break };
        // The last target takes the element itself; the others get copies.
        let (copy, keep) = if i + 1 == targets.len() {
            (el, None)
        } else {
            (el.clone(), Some(el))
        };
        match deliver(tx, ToSession::Stanza(copy)) {
            Ok(()) => {
                delivered = true;
                rest = keep;
            }
            Err(ToSession::Stanza(back)) => rest = keep.or(Some(back)),
            Err(_) => rest = keep,
        }
    }
    if delivered {
        return None;
    }
    let el = rest?;
    match ty {
        "headline" | "error" => None,
        _ => store_offline(shared, el, &bare).await,
    }
}

/// Whether a message is worth keeping: XEP-0160 §3 and XEP-0085 say not to store
/// messages that carry only chat states or other transient notices.
fn worth_storing(el: &Element) -> bool {
    el.children()
        .any(|c| c.is("body", ns::CLIENT) || c.is("subject", ns::CLIENT))
}

/// Keeps a message for a local user who cannot take it now, or says why not.
pub(crate) async fn store_offline(
    shared: &Arc<Shared>,
    mut el: Element,
    user: &BareJid,
) -> Option<Bounce> {
    let store = shared.store.clone();
    match store.account_exists(user.as_str()).await {
        Ok(true) => {}
        // RFC 6121 §8.5.2.2.1: no such account.
        Ok(false) => return bounced(el, "cancel", "service-unavailable"),
        Err(e) => {
            warn!(error = %e, "cannot check account");
            return bounced(el, "wait", "internal-server-error");
        }
    }
    if let Some(from) = el.attr("from") {
        match store.blocklist(user.as_str()).await {
            Ok(list) if crate::routing::blocked(&list, from) => {
                return bounced(el, "cancel", "service-unavailable");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read block list"),
        }
    }
    if !worth_storing(&el) {
        return None;
    }
    // XEP-0082 allows any precision, but common clients parse at most microseconds;
    // milliseconds are plenty for ordering a human's messages.
    let now = OffsetDateTime::now_utc();
    let stamp = now
        .replace_millisecond(now.millisecond())
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default();
    el.append_child(
        Element::builder("delay", ns::DELAY)
            .attr(stanza::name("from"), user.domain().as_str())
            .attr(stanza::name("stamp"), stamp)
            .append("Offline storage")
            .build(),
    );
    let mut text = Vec::new();
    if outpost_proto::xml::write_stanza(&el, &mut text).is_err() {
        return bounced(el, "modify", "not-acceptable");
    }
    let text = String::from_utf8_lossy(&text);
    let quota = shared.config.limits.offline_quota;
    match store.push_offline(user.as_str(), &text, quota).await {
        Ok(_) => {
            // The user may have come online while we were storing: make sure the
            // message does not wait for the next login.
            if let Some((_, tx)) = shared.router.message_targets(user, false).first() {
                let _ = deliver(tx, ToSession::FlushOffline);
            }
            None
        }
        Err(StoreError::QuotaExceeded { .. }) => bounced(el, "wait", "resource-constraint"),
        Err(e) => {
            warn!(error = %e, "cannot store offline message");
            bounced(el, "wait", "internal-server-error")
        }
    }
}

/// Sends an error reply for `el` to its sender, wherever it is: a local full JID through
/// the router, a remote one over federation. Errors, results and presence are never
/// answered with an error (RFC 6120 §8.3.1).
pub(crate) fn bounce(shared: &Arc<Shared>, el: &Element, error_type: &str, condition: &str) {
    if matches!(el.attr("type"), Some("error") | Some("result")) || el.name() == "presence" {
        return;
    }
    send_to(shared, stanza::error_reply(el, error_type, condition));
}

/// Sends a stanza the server made (a reply) to its `to`: a bound local resource, or a
/// remote address over federation. Nothing is stored.
pub(crate) fn bounce_reply(shared: &Arc<Shared>, reply: Element) {
    send_to(shared, reply);
}

fn send_to(shared: &Arc<Shared>, reply: Element) {
    let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
        return;
    };
    if shared.config.serves_domain(to.domain().as_str()) {
        if let Ok(full) = FullJid::try_from(to) {
            let _ = shared.router.send_to_full(&full, ToSession::Stanza(reply));
        }
        return;
    }
    let Some(fed) = shared.federation.as_ref() else {
        return;
    };
    let Some(local) = reply
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .map(|f| f.domain().as_str().to_owned())
        .filter(|d| shared.config.serves_domain(d))
    else {
        return;
    };
    fed.send(shared, &local, to.domain().as_str(), reply);
}

/// Tells a local sender that a message it sent will never arrive, keeping the error in its
/// offline store if it is not online: used when a queued stanza's lifetime ends, days
/// after it was sent. The error carries the original body (RFC 6120 §8.3.1 allows it), so
/// the user knows which message failed.
pub(crate) async fn bounce_durably(
    shared: &Arc<Shared>,
    el: &Element,
    error_type: &str,
    condition: &str,
) {
    if matches!(el.attr("type"), Some("error") | Some("result")) {
        return;
    }
    let mut reply = stanza::error_reply(el, error_type, condition);
    if el.name() != "message" {
        send_to(shared, reply);
        return;
    }
    for body in el.children().filter(|c| c.is("body", ns::CLIENT)) {
        reply.append_child(body.clone());
    }
    let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
        return;
    };
    if !shared.config.serves_domain(to.domain().as_str()) {
        return;
    }
    let bare = to.to_bare();
    let reply = match to.try_as_full() {
        Ok(full) => match shared.router.send_to_full(full, ToSession::Stanza(reply)) {
            Ok(()) => return,
            Err(
                Undelivered::NotBound(ToSession::Stanza(r))
                | Undelivered::Full(ToSession::Stanza(r)),
            ) => r,
            Err(_) => return,
        },
        Err(_) => reply,
    };
    let _ = store_offline(shared, reply, &bare).await;
}

/// Presence from another server for a local user (RFC 6121 §4): probes go to the user's
/// available resources to answer, directed and broadcast presence to the addressed
/// resources, subscription stanzas through the roster rules.
pub(crate) async fn inbound_presence(shared: &Arc<Shared>, el: Element, from: Jid, to: Jid) {
    let ty = el.attr("type").unwrap_or("").to_owned();
    match ty.as_str() {
        "probe" => {
            for (_, tx) in shared.router.available(&to.to_bare()) {
                let _ = deliver(&tx, ToSession::Probe { from: from.clone() });
            }
        }
        "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" => {
            let (owner, contact) = (to.to_bare(), from.to_bare());
            let mut el = el;
            // RFC 6121 §3.1.3: subscription stanzas are between bare JIDs.
            stanza::set_attr(&mut el, "from", contact.as_str());
            stanza::set_attr(&mut el, "to", owner.as_str());
            crate::roster::apply_inbound(shared, &owner, &contact, &ty, el).await;
        }
        "" | "unavailable" | "error" => match to.try_as_full() {
            Ok(full) => {
                let _ = shared.router.send_to_full(full, ToSession::Stanza(el));
            }
            Err(bare) if ty != "error" => {
                for (full, tx) in shared.router.available(bare) {
                    let mut copy = el.clone();
                    stanza::set_attr(&mut copy, "to", full.as_str());
                    let _ = deliver(&tx, ToSession::Stanza(copy));
                }
            }
            Err(_) => {}
        },
        _ => {}
    }
}
