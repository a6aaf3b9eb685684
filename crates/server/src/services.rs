//! IQ services the server answers itself: service discovery (XEP-0030), software version
//! (XEP-0092), ping (XEP-0199), vCards (XEP-0054), blocking (XEP-0191) and in-band
//! registration (XEP-0077).

use std::sync::Arc;

use jid::BareJid;
use minidom::Element;
use outpost_proto::stanza::{self, ns};
use outpost_store::StoreError;
use tracing::{info, warn};

use crate::accounts::{self, AccountError};
use crate::router::{ToSession, deliver};
use crate::session::Session;

/// Longest password accepted at registration or change.
const MAX_PASSWORD: usize = 1024;

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

impl Session {
    /// The payload's (name, namespace).
    fn payload_key(el: &Element) -> (String, String) {
        stanza::iq_payload(el)
            .map(|p| (p.name().to_owned(), p.ns()))
            .unwrap_or_default()
    }

    /// An IQ without `to`, or to the user's own bare JID: handled for the account
    /// (RFC 6120 §10.3.3).
    pub(crate) async fn own_iq(&mut self, el: Element) {
        let (name, payload_ns) = Self::payload_key(&el);
        match (name.as_str(), payload_ns.as_str()) {
            ("query", ns::ROSTER) => self.roster_iq(el).await,
            ("vCard", ns::VCARD) => self.own_vcard(el).await,
            ("blocklist" | "block" | "unblock", ns::BLOCKING) => self.blocking_iq(el).await,
            ("query", ns::REGISTER) => self.register_iq(el).await,
            ("query", ns::DISCO_INFO) if el.attr("to").is_some() => {
                self.account_disco(&el);
            }
            // Without `to`, discovery and the rest address the server.
            _ => self.server_iq(el).await,
        }
    }

    /// An IQ to the server's domain.
    pub(crate) async fn server_iq(&mut self, el: Element) {
        let (name, payload_ns) = Self::payload_key(&el);
        let get = el.attr("type") == Some("get");
        let from = el.attr("to").map(str::to_owned);
        let has_node = stanza::iq_payload(&el).is_some_and(|p| p.attr("node").is_some());
        match (name.as_str(), payload_ns.as_str(), get) {
            // XEP-0030 §7: the server publishes no nodes.
            ("query", ns::DISCO_INFO | ns::DISCO_ITEMS, true) if has_node => {
                self.reply_error(&el, "cancel", "item-not-found");
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
                ];
                if self.shared.config.registration_enabled() {
                    features.push(ns::REGISTER);
                }
                for f in features {
                    q.append_child(feature(f));
                }
                self.reply_with(&el, from.as_deref(), q);
            }
            ("query", ns::DISCO_ITEMS, true) => {
                self.reply_with(&el, from.as_deref(), query(ns::DISCO_ITEMS));
            }
            ("query", ns::VERSION, true) => {
                let mut q = query(ns::VERSION);
                q.append_child(text_el("name", ns::VERSION, "Outpost"));
                q.append_child(text_el("version", ns::VERSION, env!("CARGO_PKG_VERSION")));
                self.reply_with(&el, from.as_deref(), q);
            }
            ("ping", ns::PING, true) => {
                let reply = stanza::iq_result(&el, from.as_deref());
                self.proto.send(&reply);
            }
            ("query", ns::REGISTER, _) => self.register_iq(el).await,
            _ => self.reply_error(&el, "cancel", "service-unavailable"),
        }
    }

    /// An IQ to another local account's bare JID, answered by the server on its behalf
    /// (RFC 6121 §8.5.2.1.3... for IQs: §8.5.1).
    pub(crate) async fn other_account_iq(&mut self, el: Element, to: BareJid) {
        match self.shared.store.account_exists(to.as_str()).await {
            Ok(true) => {}
            Ok(false) => {
                self.reply_error(&el, "cancel", "service-unavailable");
                return;
            }
            Err(_) => {
                self.reply_error(&el, "wait", "internal-server-error");
                return;
            }
        }
        let (name, payload_ns) = Self::payload_key(&el);
        let get = el.attr("type") == Some("get");
        match (name.as_str(), payload_ns.as_str(), get) {
            ("vCard", ns::VCARD, true) => self.send_vcard(&el, &to).await,
            ("query", ns::DISCO_INFO, true) => self.account_disco(&el),
            ("ping", ns::PING, true) => {
                let reply = stanza::iq_result(&el, Some(to.as_str()));
                self.proto.send(&reply);
            }
            _ => self.reply_error(&el, "cancel", "service-unavailable"),
        }
    }

    fn reply_with(&mut self, request: &Element, from: Option<&str>, payload: Element) {
        let mut reply = stanza::iq_result(request, from);
        reply.append_child(payload);
        self.proto.send(&reply);
    }

    fn account_disco(&mut self, el: &Element) {
        let mut q = query(ns::DISCO_INFO);
        q.append_child(
            Element::builder("identity", ns::DISCO_INFO)
                .attr(stanza::name("category"), "account")
                .attr(stanza::name("type"), "registered")
                .build(),
        );
        q.append_child(feature(ns::DISCO_INFO));
        let from = el.attr("to").map(str::to_owned);
        self.reply_with(el, from.as_deref(), q);
    }

    // ---- vCard (XEP-0054) ----

    async fn own_vcard(&mut self, el: Element) {
        let Some(user) = self.user.clone() else {
            return;
        };
        if el.attr("type") == Some("get") {
            self.send_vcard(&el, &user).await;
            return;
        }
        let Some(card) = el.get_child("vCard", ns::VCARD) else {
            self.reply_error(&el, "modify", "bad-request");
            return;
        };
        let mut text = Vec::new();
        if outpost_proto::xml::write_stanza(card, &mut text).is_err() {
            self.reply_error(&el, "modify", "not-acceptable");
            return;
        }
        let text = String::from_utf8_lossy(&text);
        match self.shared.store.set_vcard(user.as_str(), &text).await {
            Ok(()) => self.proto.send(&stanza::iq_result(&el, None)),
            Err(e) => {
                warn!(error = %e, "cannot store vCard");
                self.reply_error(&el, "wait", "internal-server-error");
            }
        }
    }

    async fn send_vcard(&mut self, el: &Element, owner: &BareJid) {
        let card = match self.shared.store.vcard(owner.as_str()).await {
            Ok(Some(text)) => match text.parse::<Element>() {
                Ok(card) => card,
                Err(e) => {
                    warn!(error = %e, "stored vCard does not parse");
                    self.reply_error(el, "wait", "internal-server-error");
                    return;
                }
            },
            // XEP-0054 §3.1: no vCard is an empty one.
            Ok(None) => Element::builder("vCard", ns::VCARD).build(),
            Err(e) => {
                warn!(error = %e, "cannot read vCard");
                self.reply_error(el, "wait", "internal-server-error");
                return;
            }
        };
        let from = el.attr("to").map(str::to_owned);
        self.reply_with(el, from.as_deref(), card);
    }

    // ---- blocking (XEP-0191) ----

    async fn blocking_iq(&mut self, el: Element) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let Some(payload) = stanza::iq_payload(&el).cloned() else {
            return;
        };
        let store = self.shared.store.clone();
        match (payload.name(), el.attr("type")) {
            ("blocklist", Some("get")) => {
                self.blocklist_interested = true;
                let mut list = Element::builder("blocklist", ns::BLOCKING).build();
                for jid in self.blocklist.iter() {
                    list.append_child(
                        Element::builder("item", ns::BLOCKING)
                            .attr(stanza::name("jid"), jid.as_str())
                            .build(),
                    );
                }
                self.reply_with(&el, None, list);
            }
            (kind @ ("block" | "unblock"), Some("set")) => {
                let mut jids = Vec::new();
                for item in payload.children().filter(|c| c.is("item", ns::BLOCKING)) {
                    match item.attr("jid").and_then(|j| jid::Jid::new(j).ok()) {
                        Some(j) => jids.push(j.to_string()),
                        None => {
                            self.reply_error(&el, "modify", "jid-malformed");
                            return;
                        }
                    }
                }
                // XEP-0191 §3.3: a block without items is a bad request; an unblock
                // without items unblocks everyone.
                if kind == "block" && jids.is_empty() {
                    self.reply_error(&el, "modify", "bad-request");
                    return;
                }
                let result = if kind == "block" {
                    store.block(user.as_str(), &jids).await
                } else {
                    store.unblock(user.as_str(), &jids).await
                };
                let list = match result {
                    Ok(()) => store.blocklist(user.as_str()).await,
                    Err(e) => Err(e),
                };
                let list = match list {
                    Ok(l) => Arc::new(l),
                    Err(e) => {
                        warn!(error = %e, "cannot update block list");
                        self.reply_error(&el, "wait", "internal-server-error");
                        return;
                    }
                };
                self.proto.send(&stanza::iq_result(&el, None));
                let mut push = Element::builder("iq", ns::CLIENT)
                    .attr(stanza::name("type"), "set")
                    .attr(stanza::name("id"), format!("block-push-{}", self.id))
                    .build();
                push.append_child(payload);
                for (_, tx) in self.shared.router.all_sessions(&user) {
                    let _ = deliver(
                        &tx,
                        ToSession::Blocklist {
                            list: list.clone(),
                            push: push.clone(),
                        },
                    );
                }
            }
            _ => self.reply_error(&el, "modify", "bad-request"),
        }
    }

    /// The block list changed: newly blocked contacts stop seeing this resource, unblocked
    /// subscribers see it again (XEP-0191 §3.3, §3.4), and an interested client is told.
    pub(crate) fn apply_blocklist(&mut self, list: Arc<Vec<String>>, mut push: Element) {
        let old = std::mem::replace(&mut self.blocklist, list);
        if let (Some(jid), true) = (self.jid.clone(), self.available) {
            let mut unavailable = Element::builder("presence", ns::CLIENT)
                .attr(stanza::name("type"), "unavailable")
                .build();
            stanza::set_attr(&mut unavailable, "from", jid.as_str());
            let presence = self.current_presence();
            for item in self.roster.values() {
                let Ok(contact) = BareJid::new(&item.jid) else {
                    continue;
                };
                let was = crate::routing::blocked(&old, &item.jid);
                let is = self.blocks(&item.jid);
                if !was && is {
                    self.send_presence_to_bare(&unavailable, &contact);
                } else if was
                    && !is
                    && matches!(
                        item.subscription,
                        outpost_store::Subscription::From | outpost_store::Subscription::Both
                    )
                    && let Some(p) = &presence
                {
                    self.send_presence_to_bare(p, &contact);
                }
            }
        }
        if self.blocklist_interested {
            if let Some(jid) = &self.jid {
                stanza::set_attr(&mut push, "to", jid.as_str());
            }
            self.proto.send(&push);
        }
    }

    // ---- in-band registration (XEP-0077) ----

    /// Registration before authentication.
    pub(crate) async fn on_pre_auth_iq(&mut self, el: Element) {
        let (name, payload_ns) = Self::payload_key(&el);
        if (name.as_str(), payload_ns.as_str()) != ("query", ns::REGISTER)
            || !self.shared.config.registration_enabled()
        {
            self.reply_error(&el, "cancel", "service-unavailable");
            return;
        }
        if el.attr("type") == Some("get") {
            let mut q = query(ns::REGISTER);
            q.append_child(text_el(
                "instructions",
                ns::REGISTER,
                "Choose a username and password.",
            ));
            q.append_child(Element::builder("username", ns::REGISTER).build());
            q.append_child(Element::builder("password", ns::REGISTER).build());
            self.reply_with(&el, None, q);
            return;
        }
        let Some((username, password)) = register_fields(&el) else {
            self.reply_error(&el, "modify", "not-acceptable");
            return;
        };
        let now = std::time::Instant::now();
        if !self.shared.registrations.allows(now, self.peer.ip()) {
            // XEP-0077 §3.1: too many registrations from this address for now.
            self.reply_error(&el, "wait", "resource-constraint");
            return;
        }
        let jid = format!("{username}@{}", self.proto.domain());
        let iterations = self.shared.config.auth.scram_iterations;
        let store = self.shared.store.clone();
        match accounts::add_user(store.as_ref(), &jid, &password, iterations).await {
            Ok(()) => {
                self.shared.registrations.record(now, self.peer.ip());
                info!(account = %jid, "registered");
                self.proto.send(&stanza::iq_result(&el, None));
            }
            Err(AccountError::Store(StoreError::AccountExists)) => {
                self.reply_error(&el, "cancel", "conflict");
            }
            Err(AccountError::InvalidJid(_) | AccountError::BadPassword(_)) => {
                self.reply_error(&el, "modify", "not-acceptable");
            }
            Err(e) => {
                warn!(error = %e, "registration failed");
                self.reply_error(&el, "wait", "internal-server-error");
            }
        }
    }

    /// Password change and account removal by a logged-in user (XEP-0077 §3.2, §3.3).
    async fn register_iq(&mut self, el: Element) {
        let Some(user) = self.user.clone() else {
            return;
        };
        let Some(q) = el.get_child("query", ns::REGISTER) else {
            return;
        };
        let store = self.shared.store.clone();
        if el.attr("type") == Some("get") {
            let mut reply = query(ns::REGISTER);
            reply.append_child(Element::builder("registered", ns::REGISTER).build());
            reply.append_child(text_el(
                "username",
                ns::REGISTER,
                user.node().map(|n| n.as_str()).unwrap_or_default(),
            ));
            self.reply_with(&el, None, reply);
            return;
        }
        if q.has_child("remove", ns::REGISTER) {
            match accounts::remove_user(store.as_ref(), user.as_str()).await {
                Ok(()) => {
                    info!("account removed by its owner");
                    self.proto.send(&stanza::iq_result(&el, None));
                    for (_, tx) in self.shared.router.all_sessions(&user) {
                        let _ = deliver(&tx, ToSession::AccountRemoved);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot remove account");
                    self.reply_error(&el, "wait", "internal-server-error");
                }
            }
            return;
        }
        let Some((username, password)) = register_fields(&el) else {
            self.reply_error(&el, "modify", "bad-request");
            return;
        };
        if Some(username.as_str()) != user.node().map(|n| n.as_str()) {
            self.reply_error(&el, "modify", "bad-request");
            return;
        }
        let iterations = self.shared.config.auth.scram_iterations;
        match accounts::set_password(store.as_ref(), user.as_str(), &password, iterations).await {
            Ok(()) => {
                info!("password changed");
                self.proto.send(&stanza::iq_result(&el, None));
            }
            Err(AccountError::BadPassword(_)) => self.reply_error(&el, "modify", "not-acceptable"),
            Err(e) => {
                warn!(error = %e, "cannot change password");
                self.reply_error(&el, "wait", "internal-server-error");
            }
        }
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
