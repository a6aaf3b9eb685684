//! Blocking (XEP-0191): which JIDs a block list covers, and the block list commands.
//!
//! The list is stored, then pushed to every session of the user
//! ([`ToSession::Blocklist`]), which keeps its own copy for the checks on its hot path;
//! what a session does when its list changes (presence to newly blocked and unblocked
//! contacts) is the session's.

use std::sync::Arc;

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, ErrorType, StanzaError, ns};
use tracing::warn;

use crate::delivery::Delivery;
use crate::router::ToSession;

/// Whether `jid` matches a block list (XEP-0191 §3.3: an item matches the full JID, the
/// bare JID or the domain).
pub(crate) fn matches(list: &[String], jid: &str) -> bool {
    if list.is_empty() {
        return false;
    }
    let Ok(j) = Jid::new(jid) else {
        return false;
    };
    let bare = j.to_bare();
    list.iter()
        .any(|b| b == j.as_str() || b == bare.as_str() || b == j.domain().as_str())
}

/// The error for a stanza to a blocked entity (XEP-0191 §3.5: `cancel`, not the `modify`
/// that `not-acceptable` usually has).
pub(crate) fn blocked_error() -> StanzaError {
    StanzaError::with_type(ErrorType::Cancel, Condition::NotAcceptable)
        .application(Element::builder("blocked", ns::BLOCKING_ERRORS).build())
}

/// The answer to a block list request (XEP-0191 §3.2).
pub(crate) fn list_reply(request: &Element, list: &[String]) -> Element {
    let mut payload = Element::builder("blocklist", ns::BLOCKING).build();
    for jid in list {
        payload.append_child(
            Element::builder("item", ns::BLOCKING)
                .attr(stanza::name("jid"), jid.as_str())
                .build(),
        );
    }
    let mut reply = stanza::iq_result(request, None);
    reply.append_child(payload);
    reply
}

/// A block or unblock command (XEP-0191 §3.3, §3.4): stores the change, pushes the new list
/// to every session of the user, and returns the result for the requester. `push_id`
/// names the pushes.
pub(crate) async fn change(
    d: &Delivery,
    user: &BareJid,
    request: &Element,
    push_id: &str,
) -> Result<Element, StanzaError> {
    let payload = stanza::iq_payload(request).ok_or(Condition::BadRequest)?;
    let block = match (payload.name(), request.attr("type")) {
        ("block", Some("set")) => true,
        ("unblock", Some("set")) => false,
        _ => return Err(Condition::BadRequest.into()),
    };
    let mut jids = Vec::new();
    for item in payload.children().filter(|c| c.is("item", ns::BLOCKING)) {
        let jid = item
            .attr("jid")
            .and_then(|j| Jid::new(j).ok())
            .ok_or(Condition::JidMalformed)?;
        jids.push(jid.to_string());
    }
    // A block without items is a bad request; an unblock without items unblocks everyone.
    if block && jids.is_empty() {
        return Err(Condition::BadRequest.into());
    }
    let store = d.store();
    let result = if block {
        store.block(user.as_str(), &jids).await
    } else {
        store.unblock(user.as_str(), &jids).await
    };
    let list = match result {
        Ok(()) => store.blocklist(user.as_str()).await,
        Err(e) => Err(e),
    };
    let list = Arc::new(list.map_err(|e| {
        warn!(error = %e, "cannot update block list");
        StanzaError::new(Condition::InternalServerError)
    })?);
    let mut push = Element::builder("iq", ns::CLIENT)
        .attr(stanza::name("type"), "set")
        .attr(stanza::name("id"), push_id)
        .build();
    push.append_child(payload.clone());
    d.router().tell_all(user, || ToSession::Blocklist {
        list: list.clone(),
        push: push.clone(),
    });
    Ok(stanza::iq_result(request, None))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn block_list_matches_full_bare_and_domain() {
        let list = vec!["spam.example".to_owned(), "eve@x".to_owned()];
        assert!(matches(&list, "anyone@spam.example/r"));
        assert!(matches(&list, "eve@x/phone"));
        assert!(matches(&list, "eve@x"));
        assert!(!matches(&list, "bob@x/eve"));
        assert!(!matches(&[], "eve@x"));
    }
}
