//! IQ services the server answers itself: service discovery (XEP-0030), software version
//! (XEP-0092), ping (XEP-0199), vCards (XEP-0054) and in-band registration (XEP-0077).
//!
//! Each function takes the request and returns the whole answer, a result to send or a
//! stanza error; the caller writes it to whoever asked.

use std::net::IpAddr;

use jid::{BareJid, FullJid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, StanzaError, ns};
use outpost_store::StoreError;
use tracing::{info, warn};

use crate::accounts::{self, AccountError};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::throttle::RegistrationThrottle;

/// Longest password accepted at registration or change.
pub(crate) const MAX_PASSWORD: usize = 1024;

/// Whether a discovery request names a node (XEP-0030 §3.2).
fn has_node(request: &Element) -> bool {
    stanza::iq_payload(request).is_some_and(|p| p.attr("node").is_some())
}

/// The answer to an IQ: a result stanza, or the error to reply with.
pub(crate) type IqAnswer = Result<Element, StanzaError>;

fn query(ns_: &str) -> Element {
    Element::builder("query", ns_).build()
}

fn feature(var: &str) -> Element {
    Element::builder("feature", ns::DISCO_INFO)
        .attr(stanza::name("var"), var)
        .build()
}

fn text_el(name: &str, ns_: &str, text: &str) -> Element {
    Element::builder(name, ns_).append(text).build()
}

/// The payload's (name, namespace).
pub(crate) fn payload_key(el: &Element) -> (String, String) {
    stanza::iq_payload(el)
        .map(|p| (p.name().to_owned(), p.ns()))
        .unwrap_or_default()
}

/// A result answering `request` from its `to` (the server or the account addressed),
/// carrying `payload`.
fn result_with(request: &Element, payload: Element) -> Element {
    let mut reply = stanza::iq_result(request, request.attr("to"));
    reply.append_child(payload);
    reply
}

fn internal(what: &str, e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "{what}");
    StanzaError::new(Condition::InternalServerError)
}

/// An IQ to the server's domain: discovery, version and ping. Registration is the
/// caller's (it needs the account).
pub(crate) fn server_iq(d: &Delivery, request: &Element, registration: bool) -> IqAnswer {
    let (name, payload_ns) = payload_key(request);
    let get = request.attr("type") == Some("get");
    match (name.as_str(), payload_ns.as_str(), get) {
        // XEP-0030 §7: the server publishes no nodes.
        ("query", ns::DISCO_INFO | ns::DISCO_ITEMS, true) if has_node(request) => {
            Err(Condition::ItemNotFound.into())
        }
        ("query", ns::DISCO_INFO, true) => {
            let mut q = query(ns::DISCO_INFO);
            q.append_child(
                Element::builder("identity", ns::DISCO_INFO)
                    .attr(stanza::name("category"), "server")
                    .attr(stanza::name("type"), "im")
                    .attr(stanza::name("name"), "Outpost")
                    .build(),
            );
            let mut features = vec![
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                ns::VERSION,
                ns::PING,
                ns::VCARD,
                ns::BLOCKING,
                ns::OFFLINE,
                ns::ROSTER,
                ns::CARBONS,
            ];
            if registration {
                features.push(ns::REGISTER);
            }
            for f in features {
                q.append_child(feature(f));
            }
            Ok(result_with(request, q))
        }
        ("query", ns::DISCO_ITEMS, true) => {
            // The server's services (XEP-0030 §4): multi-user chat and the like.
            let mut q = query(ns::DISCO_ITEMS);
            let domain = request.attr("to").unwrap_or_default();
            for service in d.services_of(domain) {
                q.append_child(
                    Element::builder("item", ns::DISCO_ITEMS)
                        .attr(stanza::name("jid"), service)
                        .build(),
                );
            }
            Ok(result_with(request, q))
        }
        ("query", ns::VERSION, true) => {
            let mut q = query(ns::VERSION);
            q.append_child(text_el("name", ns::VERSION, "Outpost"));
            q.append_child(text_el("version", ns::VERSION, env!("CARGO_PKG_VERSION")));
            Ok(result_with(request, q))
        }
        ("ping", ns::PING, true) => Ok(stanza::iq_result(request, request.attr("to"))),
        _ => Err(Condition::ServiceUnavailable.into()),
    }
}

/// An IQ request for one of our domains or one of our users' bare JIDs from anyone, a
/// client on this server or a user of another (RFC 6120 §8.5.3, RFC 6121 §8.5.1): the
/// server answers alike. `registration`: the requester could register here (XEP-0077 is
/// for clients of this server only).
pub(crate) async fn answer(
    d: &Delivery,
    request: &Element,
    to: &jid::Jid,
    registration: bool,
) -> IqAnswer {
    match to.node() {
        None => server_iq(d, request, registration),
        Some(_) => account_iq(d, request, &to.to_bare()).await,
    }
}

/// An IQ to another local account's bare JID, answered by the server on its behalf
/// (RFC 6121 §8.5.1): its vCard, discovery and ping.
pub(crate) async fn account_iq(d: &Delivery, request: &Element, to: &BareJid) -> IqAnswer {
    match d.store().account_exists(to.as_str()).await {
        Ok(true) => {}
        Ok(false) => return Err(Condition::ServiceUnavailable.into()),
        Err(e) => return Err(internal("cannot check account", e)),
    }
    let (name, payload_ns) = payload_key(request);
    let get = request.attr("type") == Some("get");
    let requester = request.attr("from").and_then(|f| jid::Jid::new(f).ok());
    if crate::pep::is_pubsub(request)
        && let Some(requester) = &requester
    {
        return crate::pep::iq(d, to, requester, request).await;
    }
    match (name.as_str(), payload_ns.as_str(), get) {
        ("vCard", ns::VCARD, true) => vcard_get(d, request, to).await,
        ("query", ns::DISCO_INFO, true) if !has_node(request) => Ok(account_disco(d, request)),
        ("query", ns::DISCO_ITEMS, true) if !has_node(request) => {
            let reader = requester.map_or_else(|| to.clone(), |r| r.to_bare());
            Ok(account_items(d, request, to, &reader).await)
        }
        ("query", ns::DISCO_INFO | ns::DISCO_ITEMS, true) => Err(Condition::ItemNotFound.into()),
        ("ping", ns::PING, true) => Ok(stanza::iq_result(request, Some(to.as_str()))),
        _ => Err(Condition::ServiceUnavailable.into()),
    }
}

/// Discovery on an account's bare JID (XEP-0030 §3.1): its identities and what the
/// server does for the account: personal eventing (XEP-0163 §6) with bookmark conversion
/// (XEP-0402) and vCard avatar conversion (XEP-0398), the archive (XEP-0313 §7, when on),
/// stanza-ids (XEP-0359 §6).
pub(crate) fn account_disco(d: &Delivery, request: &Element) -> Element {
    let mut q = query(ns::DISCO_INFO);
    for (category, kind) in [("account", "registered"), ("pubsub", "pep")] {
        q.append_child(
            Element::builder("identity", ns::DISCO_INFO)
                .attr(stanza::name("category"), category)
                .attr(stanza::name("type"), kind)
                .build(),
        );
    }
    let mut features = vec![
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PUBSUB,
        "urn:xmpp:bookmarks:1#compat",
        "urn:xmpp:pep-vcard-conversion:0",
    ];
    features.extend(crate::pep::FEATURES);
    if d.archive().enabled() {
        features.extend([ns::MAM, ns::MAM_EXTENDED, ns::SID]);
    }
    if d.pushes().enabled() {
        features.push(crate::push::NS_PUSH);
    }
    features.sort_unstable();
    for f in features {
        q.append_child(feature(f));
    }
    result_with(request, q)
}

/// The items of an account's bare JID (XEP-0030 §4): the personal eventing nodes `reader`
/// may read.
pub(crate) async fn account_items(
    d: &Delivery,
    request: &Element,
    owner: &BareJid,
    reader: &BareJid,
) -> Element {
    let mut q = query(ns::DISCO_ITEMS);
    for item in crate::pep::node_items(d, owner, reader).await {
        q.append_child(item);
    }
    result_with(request, q)
}

/// A vCard of `owner` (XEP-0054 §3.1: no vCard is an empty one).
pub(crate) async fn vcard_get(d: &Delivery, request: &Element, owner: &BareJid) -> IqAnswer {
    let card = match d.store().vcard(owner.as_str()).await {
        Ok(Some(text)) => text
            .parse::<Element>()
            .map_err(|e| internal("stored vCard does not parse", e))?,
        Ok(None) => Element::builder("vCard", ns::VCARD).build(),
        Err(e) => return Err(internal("cannot read vCard", e)),
    };
    Ok(result_with(request, card))
}

/// The user publishes their vCard (XEP-0054 §3.2).
pub(crate) async fn vcard_set(d: &Delivery, request: &Element, user: &BareJid) -> IqAnswer {
    let card = request
        .get_child("vCard", ns::VCARD)
        .ok_or(Condition::BadRequest)?;
    let mut text = Vec::new();
    if outpost_proto::xml::write_stanza(card, &mut text).is_err() {
        return Err(Condition::NotAcceptable.into());
    }
    let text = String::from_utf8_lossy(&text);
    d.store()
        .set_vcard(user.as_str(), &text)
        .await
        .map_err(|e| internal("cannot store vCard", e))?;
    crate::avatar::from_vcard(d, user, card).await;
    Ok(stanza::iq_result(request, None))
}

/// In-band registration before authentication (XEP-0077 §3.1) on `domain`, from `peer`.
pub(crate) async fn register_new(
    d: &Delivery,
    config: &Config,
    throttle: &RegistrationThrottle,
    peer: IpAddr,
    domain: &str,
    request: &Element,
) -> IqAnswer {
    let (name, payload_ns) = payload_key(request);
    if (name.as_str(), payload_ns.as_str()) != ("query", ns::REGISTER)
        || !config.registration_enabled()
        || !d.is_home(domain)
    {
        // A hub standing in for a site makes no accounts for it: they are made at home.
        return Err(Condition::ServiceUnavailable.into());
    }
    if request.attr("type") == Some("get") {
        let mut q = query(ns::REGISTER);
        q.append_child(text_el(
            "instructions",
            ns::REGISTER,
            "Choose a username and password.",
        ));
        q.append_child(Element::builder("username", ns::REGISTER).build());
        q.append_child(Element::builder("password", ns::REGISTER).build());
        let mut reply = stanza::iq_result(request, None);
        reply.append_child(q);
        return Ok(reply);
    }
    let (username, password) = register_fields(request).ok_or(Condition::NotAcceptable)?;
    create_registered(d, config, throttle, peer, domain, &username, &password).await?;
    Ok(stanza::iq_result(request, None))
}

/// Makes the account a registration asks for (in-band or over the HTTP API), within the
/// registration limits of `peer`; its JID. The caller checked that registration is on and
/// that `domain` is one of ours.
pub(crate) async fn create_registered(
    d: &Delivery,
    config: &Config,
    throttle: &RegistrationThrottle,
    peer: IpAddr,
    domain: &str,
    username: &str,
    password: &str,
) -> Result<String, StanzaError> {
    let now = std::time::Instant::now();
    if !throttle.allows(now, peer) {
        // XEP-0077 §3.1: too many registrations from this address for now.
        return Err(Condition::ResourceConstraint.into());
    }
    let jid = format!("{username}@{domain}");
    let iterations = config.auth.scram_iterations;
    match accounts::add_user(d.store().as_ref(), &jid, password, iterations).await {
        Ok(()) => {
            throttle.record(now, peer);
            info!(account = %jid, "registered");
            Ok(jid)
        }
        Err(AccountError::Store(StoreError::AccountExists)) => Err(Condition::Conflict.into()),
        Err(
            AccountError::InvalidJid { .. }
            | AccountError::NoUserPart(_)
            | AccountError::BadPassword(_),
        ) => Err(Condition::NotAcceptable.into()),
        Err(e) => Err(internal("registration failed", e)),
    }
}

/// Registration requests of a logged-in user (XEP-0077 §3.2, §3.3): the form, a password
/// change, or the removal of the account, which ends every session of it.
pub(crate) async fn register_account(
    d: &Delivery,
    config: &Config,
    requester: &FullJid,
    request: &Element,
) -> IqAnswer {
    let user = &requester.to_bare();
    let q = request
        .get_child("query", ns::REGISTER)
        .ok_or(Condition::BadRequest)?;
    let store = d.store();
    if request.attr("type") == Some("get") {
        let mut payload = query(ns::REGISTER);
        payload.append_child(Element::builder("registered", ns::REGISTER).build());
        payload.append_child(text_el(
            "username",
            ns::REGISTER,
            user.node().map(|n| n.as_str()).unwrap_or_default(),
        ));
        let mut reply = stanza::iq_result(request, None);
        reply.append_child(payload);
        return Ok(reply);
    }
    if !d.is_home(user.domain().as_str()) {
        // The site owns its accounts: a password changed or an account removed here, at a
        // hub standing in for it, would be undone when the site is back.
        return Err(StanzaError::new(Condition::NotAllowed)
            .text("change the password or remove the account at its own server"));
    }
    if q.has_child("remove", ns::REGISTER) {
        accounts::remove_user(store.as_ref(), user.as_str())
            .await
            .map_err(|e| internal("cannot remove account", e))?;
        info!("account removed by its owner");
        d.router()
            .end_sessions(user, None, "not-authorized", "account removed");
        return Ok(stanza::iq_result(request, None));
    }
    let (username, password) = register_fields(request).ok_or(Condition::BadRequest)?;
    if Some(username.as_str()) != user.node().map(|n| n.as_str()) {
        return Err(Condition::BadRequest.into());
    }
    let iterations = config.auth.scram_iterations;
    match accounts::set_password(store.as_ref(), user.as_str(), &password, iterations).await {
        Ok(()) => {
            info!("password changed");
            // The user's other sessions logged in with the old password (RFC 6120 §4.9.3.12).
            d.router()
                .end_sessions(user, Some(requester), "not-authorized", "password changed");
            Ok(stanza::iq_result(request, None))
        }
        Err(AccountError::BadPassword(_)) => Err(Condition::NotAcceptable.into()),
        Err(e) => Err(internal("cannot change password", e)),
    }
}

/// The username and password of a registration form, when both are present and sane.
fn register_fields(el: &Element) -> Option<(String, String)> {
    let q = el.get_child("query", ns::REGISTER)?;
    let username = q.get_child("username", ns::REGISTER)?.text();
    let password = q.get_child("password", ns::REGISTER)?.text();
    let username = username.trim().to_owned();
    if username.is_empty() || password.is_empty() || password.len() > MAX_PASSWORD {
        return None;
    }
    Some((username, password))
}

/// A client registers its app server, or drops one (XEP-0357 §5, §6).
pub(crate) async fn push_registration(
    d: &Delivery,
    client: &FullJid,
    request: &Element,
) -> IqAnswer {
    use outpost_store::PushRegistration;
    if !d.pushes().enabled() {
        return Err(Condition::ServiceUnavailable.into());
    }
    let user = client.to_bare();
    let payload = stanza::iq_payload(request).ok_or(Condition::BadRequest)?;
    let service = payload
        .attr("jid")
        .and_then(|j| jid::Jid::new(j).ok())
        .ok_or(Condition::BadRequest)?;
    // §5: a client may not name itself or its own account as the app server.
    if service.to_bare() == user {
        return Err(Condition::NotAcceptable.into());
    }
    let node = payload.attr("node").filter(|n| !n.is_empty());
    let store = d.store();
    if payload.name() == "disable" {
        store
            .remove_push(user.as_str(), service.as_str(), node)
            .await
            .map_err(|e| internal("cannot remove a push registration", e))?;
    } else {
        let node = node.ok_or(Condition::BadRequest)?;
        let mut current = d.pushes().of(user.as_str());
        current.retain(|r| !(r.service == service.as_str() && r.node == node));
        if current.len() >= crate::push::MAX_PER_USER {
            return Err(Condition::ResourceConstraint.into());
        }
        let mut options = String::new();
        if let Some(form) = payload.get_child("x", ns::DATA_FORMS) {
            let mut text = Vec::new();
            outpost_proto::xml::write_stanza(form, &mut text)
                .map_err(|_| Condition::NotAcceptable)?;
            options = String::from_utf8_lossy(&text).into_owned();
        }
        let reg = PushRegistration {
            service: service.to_string(),
            node: node.to_owned(),
            options,
        };
        store
            .add_push(user.as_str(), &reg)
            .await
            .map_err(|e| internal("cannot store a push registration", e))?;
    }
    let regs = store
        .push_registrations()
        .await
        .map_err(|e| internal("cannot read push registrations", e))?
        .into_iter()
        .filter(|(u, _)| u == user.as_str())
        .map(|(_, r)| r)
        .collect();
    d.pushes().set(user.as_str(), regs);
    Ok(stanza::iq_result(request, None))
}
