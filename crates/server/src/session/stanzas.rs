//! What the client sends once bound: messages (RFC 6121 §8), IQs (RFC 6120 §8.2.3) and
//! their dispatch to the services; presence is in `presence`.

use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, ns};

use super::Session;
use crate::router::{ToSession, Undelivered};
use crate::services::{self, IqAnswer};
use crate::{avatar, blocking, mam, pep, private, roster};

impl Session {
    pub(super) async fn on_client_stanza(&mut self, el: Element) {
        let to = match el.attr("to") {
            None => None,
            Some(to) => match Jid::new(to) {
                Ok(j) => Some(j),
                Err(_) => {
                    // RFC 6120 §8.3.3.8: an address that does not parse.
                    self.reply_error(&el, &Condition::JidMalformed.into());
                    return;
                }
            },
        };
        match el.name() {
            "message" => self.on_outbound_message(el, to).await,
            "presence" => self.on_outbound_presence(el, to).await,
            _ => self.on_outbound_iq(el, to).await,
        }
    }

    /// Sends the answer to a request from our client.
    pub(super) fn answer(&mut self, request: &Element, answer: IqAnswer) {
        match answer {
            Ok(reply) => self.proto.send(&reply),
            Err(error) => self.reply_error(request, &error),
        }
    }

    /// A stanza to an entity the user blocks (XEP-0191 §3.5).
    fn reply_blocked(&mut self, el: &Element) {
        if stanza::may_answer_with_error(el) {
            self.proto
                .send(&stanza::error_reply(el, &blocking::blocked_error()));
        }
    }

    async fn on_outbound_message(&mut self, el: Element, to: Option<Jid>) {
        let to = match to {
            Some(to) => to,
            // A message without `to` is for the user's own bare JID (RFC 6120 §10.3.1).
            None => match &self.user {
                Some(user) => Jid::from(user.clone()),
                None => return,
            },
        };
        if self.blocks(to.as_str()) {
            self.reply_blocked(&el);
            return;
        }
        let env = self.env.clone();
        let result = env.delivery.message(el, to).await;
        self.undeliverable(result);
    }

    async fn on_outbound_iq(&mut self, el: Element, to: Option<Jid>) {
        match el.attr("type").unwrap_or("") {
            "result" | "error" => {
                match to.as_ref().map(|t| t.try_as_full()) {
                    Some(Ok(full)) if !self.blocks(full.as_str()) => self.delivery().send(el),
                    // An answer to the server's own question (entity capabilities).
                    Some(Err(bare)) if bare.node().is_none() => {
                        let env = self.env.clone();
                        pep::answer(&env.delivery, &el).await;
                    }
                    // To an account: an app server's answer to a notification.
                    Some(Err(_)) => {
                        let env = self.env.clone();
                        env.delivery.push_answer(&el).await;
                    }
                    _ => {}
                }
                return;
            }
            "get" | "set" => {}
            _ => {
                self.reply_error(&el, &Condition::BadRequest.into());
                return;
            }
        }
        if el.attr("id").is_none() || el.children().count() != 1 {
            // RFC 6120 §8.2.3: an id and exactly one payload.
            self.reply_error(&el, &Condition::BadRequest.into());
            return;
        }
        let Some(to) = to else {
            self.own_iq(el).await;
            return;
        };
        if self.blocks(to.as_str()) {
            self.reply_blocked(&el);
            return;
        }
        if !self.delivery().is_local(to.domain().as_str()) {
            if self.delivery().reaches(to.domain().as_str()) {
                // Best-effort: an IQ that cannot be sent soon is answered with an error.
                self.delivery().send(el);
            } else {
                self.reply_error(&el, &Condition::RemoteServerNotFound.into());
            }
            return;
        }
        match to.try_as_full() {
            Ok(full) => self.iq_to_resource(el, full),
            Err(bare) if bare.node().is_none() => self.server_iq(el).await,
            Err(bare) if Some(bare) == self.user.as_ref() => self.own_iq(el).await,
            Err(_) => {
                let env = self.env.clone();
                let answer = services::answer(&env.delivery, &el, &to, false).await;
                self.answer(&el, answer);
            }
        }
    }

    /// An IQ request for another local resource, forwarded to it.
    fn iq_to_resource(&mut self, el: Element, full: &jid::FullJid) {
        match self
            .delivery()
            .router()
            .send_to_full(full, ToSession::Stanza(el))
        {
            Ok(()) => {}
            // RFC 6121 §8.5.3.1: no such resource.
            Err(Undelivered::NotBound(ToSession::Stanza(el))) => {
                self.reply_error(&el, &Condition::ServiceUnavailable.into());
            }
            Err(Undelivered::Full(ToSession::Stanza(el))) => {
                self.reply_error(&el, &Condition::ResourceConstraint.into());
            }
            Err(_) => {}
        }
    }

    /// An IQ without `to`, or to the user's own bare JID: handled for the account
    /// (RFC 6120 §10.3.3).
    async fn own_iq(&mut self, el: Element) {
        let (Some(user), Some(jid)) = (self.user.clone(), self.jid.clone()) else {
            return;
        };
        let env = self.env.clone();
        let d = &env.delivery;
        let (name, payload_ns) = services::payload_key(&el);
        let get = el.attr("type") == Some("get");
        let answer = match (name.as_str(), payload_ns.as_str()) {
            ("query", ns::ROSTER) => return self.roster_iq(el, &user).await,
            ("vCard", ns::VCARD) if get => services::vcard_get(d, &el, &user).await,
            ("vCard", ns::VCARD) => {
                self.avatar_hash = None;
                services::vcard_set(d, &el, &user).await
            }
            ("blocklist", ns::BLOCKING) if get => {
                self.blocklist_interested = true;
                Ok(blocking::list_reply(&el, &self.blocklist))
            }
            ("block" | "unblock", ns::BLOCKING) => {
                let push_id = format!("block-push-{}", self.id);
                blocking::change(d, &user, &el, &push_id).await
            }
            ("blocklist", ns::BLOCKING) => Err(Condition::BadRequest.into()),
            ("query", ns::REGISTER) => {
                services::register_account(d, &env.config(), &jid, &el).await
            }
            ("enable" | "disable", ns::CARBONS) if !get => {
                let on = name == "enable";
                d.router().set_carbons(&jid, self.id, on);
                Ok(stanza::iq_result(&el, None))
            }
            ("query" | "prefs" | "metadata", ns::MAM) if !d.archive().enabled() => {
                Err(Condition::ServiceUnavailable.into())
            }
            ("query", ns::MAM) if get => Ok(mam::form_reply(&el)),
            ("query", ns::MAM) => return self.archive_query(el, &user, &jid).await,
            ("prefs", ns::MAM) => mam::prefs(d, &user, &el).await,
            ("metadata", ns::MAM) if get => mam::metadata(d, user.as_str(), &el).await,
            ("query", ns::DISCO_INFO) if get => Ok(services::account_disco(d, &el)),
            ("query", ns::DISCO_ITEMS) if get => {
                Ok(services::account_items(d, &el, &user, &user).await)
            }
            ("pubsub", pep::NS_PUBSUB | pep::NS_OWNER) => {
                let answer = pep::iq(d, &user, &Jid::from(jid.clone()), &el).await;
                if answer.is_ok()
                    && let Some(metadata) = published(&el, avatar::NS_METADATA)
                {
                    // XEP-0398 §3.1: the new avatar goes into the vCard too.
                    self.avatar_hash = None;
                    avatar::to_vcard(d, &user, metadata).await;
                }
                answer
            }
            ("query", private::NS_PRIVATE) => private::iq(d, &user, &el).await,
            ("enable" | "disable", crate::push::NS_PUSH) if !get => {
                services::push_registration(d, &jid, &el).await
            }
            // What the account does not answer, the server does for it: ping, version.
            _ => return self.server_iq(el).await,
        };
        self.answer(&el, answer);
    }

    /// A query of the user's own archive: the result messages, then the IQ result. What
    /// this session sent before is committed first, so the user reads their own writes.
    async fn archive_query(&mut self, el: Element, user: &BareJid, jid: &jid::FullJid) {
        self.settle().await;
        let env = self.env.clone();
        let requester = Jid::from(jid.clone());
        match mam::query(&env.delivery, user.as_str(), &requester, &el, false).await {
            Ok(answer) => {
                for result in &answer.results {
                    self.proto.send(result);
                }
                self.proto.send(&answer.fin);
            }
            Err(e) => self.reply_error(&el, &e),
        }
    }

    /// An IQ to the server's domain.
    async fn server_iq(&mut self, el: Element) {
        if services::payload_key(&el) == ("query".to_owned(), ns::REGISTER.to_owned()) {
            let (Some(jid), env) = (self.jid.clone(), self.env.clone()) else {
                return;
            };
            let answer = services::register_account(&env.delivery, &env.config(), &jid, &el).await;
            self.answer(&el, answer);
            return;
        }
        let env = self.env.clone();
        let answer = services::server_iq(&env.delivery, &el, env.config().registration_enabled());
        self.answer(&el, answer);
    }

    /// A roster get or set (RFC 6121 §2); a get makes this an interested resource.
    async fn roster_iq(&mut self, el: Element, user: &BareJid) {
        let env = self.env.clone();
        if el.attr("type") == Some("get") {
            match roster::get(&env.delivery, user, &el).await {
                Ok((reply, items)) => {
                    self.roster_interested = true;
                    self.roster = items.into_iter().map(|i| (i.jid.clone(), i)).collect();
                    self.proto.send(&reply);
                }
                Err(e) => self.reply_error(&el, &e),
            }
            return;
        }
        match roster::set(&env.delivery, user, &el).await {
            Ok(updates) => {
                self.apply_updates(&updates);
                self.proto.send(&stanza::iq_result(&el, None));
            }
            Err(e) => self.reply_error(&el, &e),
        }
    }

    /// A roster change this session made: its own cache first, so the rest of the
    /// stanza's handling sees it (its push comes through the channel too).
    pub(super) fn apply_updates(&mut self, updates: &[roster::Update]) {
        for u in updates {
            if Some(&u.owner) != self.user.as_ref() {
                continue;
            }
            match &u.item {
                Some(i) => {
                    self.roster.insert(u.jid.clone(), i.clone());
                }
                None => {
                    self.roster.remove(&u.jid);
                }
            }
        }
    }
}

/// The payload a pubsub request publishes to `node`, if it is such a request.
fn published<'a>(request: &'a Element, node: &str) -> Option<&'a Element> {
    let publish = request
        .get_child("pubsub", pep::NS_PUBSUB)?
        .get_child("publish", pep::NS_PUBSUB)?;
    if publish.attr("node") != Some(node) {
        return None;
    }
    publish.get_child("item", pep::NS_PUBSUB)?.children().next()
}
