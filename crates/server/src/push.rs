//! Push notifications (XEP-0357): the app servers each user's clients registered, and the
//! notifications that wake those clients' devices when a message waits for them: one
//! stored offline, or queued for a session whose connection is gone.
//!
//! Registrations are stored and kept at hand here (delivery asks on the message path). A
//! notification says only that something waits, unless the operator allows the sender and
//! the text too ([`PushConfig`]). An app server that answers with an error other than
//! "wait" loses the registration, as a dead device token should.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use jid::BareJid;
use minidom::Element;
use outpost_proto::forms::Form;
use outpost_proto::stanza::{self, ErrorType, StanzaError, ns};
use outpost_store::{PushRegistration, Store, StoreError};

use crate::config::PushConfig;

pub(crate) const NS_PUSH: &str = "urn:xmpp:push:0";
const SUMMARY: &str = "urn:xmpp:push:summary";
/// Registrations one user may have (a few devices).
pub(crate) const MAX_PER_USER: usize = 5;
/// Notifications awaiting the app server's answer, at most.
const PENDING_MAX: usize = 10_000;

/// The registrations, and the notifications sent whose answers are awaited.
pub(crate) struct Pushes {
    config: RwLock<PushConfig>,
    enabled: AtomicBool,
    by_user: RwLock<HashMap<String, Vec<PushRegistration>>>,
    /// Sent notifications by IQ id: whose registration each was.
    pending: Mutex<HashMap<String, (String, PushRegistration)>>,
}

impl Pushes {
    pub(crate) async fn load(store: &dyn Store, config: &PushConfig) -> Result<Pushes, StoreError> {
        let mut by_user: HashMap<String, Vec<PushRegistration>> = HashMap::new();
        for (user, reg) in store.push_registrations().await? {
            by_user.entry(user).or_default().push(reg);
        }
        Ok(Pushes {
            enabled: AtomicBool::new(config.enabled),
            config: RwLock::new(config.clone()),
            by_user: RwLock::new(by_user),
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn reload(&self, config: &PushConfig) {
        self.enabled.store(config.enabled, Ordering::Relaxed);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn config(&self) -> PushConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the user has any registration.
    pub(crate) fn has(&self, user: &str) -> bool {
        let by_user = self.by_user.read().unwrap_or_else(|p| p.into_inner());
        by_user.get(user).is_some_and(|r| !r.is_empty())
    }

    pub(crate) fn of(&self, user: &str) -> Vec<PushRegistration> {
        let by_user = self.by_user.read().unwrap_or_else(|p| p.into_inner());
        by_user.get(user).cloned().unwrap_or_default()
    }

    /// Keeps what the store now holds for `user`.
    pub(crate) fn set(&self, user: &str, regs: Vec<PushRegistration>) {
        let mut by_user = self.by_user.write().unwrap_or_else(|p| p.into_inner());
        if regs.is_empty() {
            by_user.remove(user);
        } else {
            by_user.insert(user.to_owned(), regs);
        }
    }

    /// The notifications to send for a message waiting for `user` (XEP-0357 §7): one IQ
    /// per registration, from the user's bare JID.
    pub(crate) fn notifications(&self, user: &BareJid, message: &Element) -> Vec<Element> {
        if !self.enabled() {
            return Vec::new();
        }
        let regs = self.of(user.as_str());
        if regs.is_empty() {
            return Vec::new();
        }
        let config = self.config();
        let sender = message
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .map(|f| f.to_bare().to_string())
            .filter(|_| config.include_sender);
        let body = message
            .get_child("body", ns::CLIENT)
            .map(Element::text)
            .filter(|_| config.include_body);
        let mut out = Vec::new();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for reg in regs {
            if pending.len() >= PENDING_MAX {
                break;
            }
            let id = format!("push-{}", crate::ids::random_id(12));
            out.push(notification(
                user,
                &reg,
                &id,
                sender.as_deref(),
                body.as_deref(),
            ));
            pending.insert(id, (user.to_string(), reg));
        }
        out
    }

    /// An answer to a notification, if it is one: the registration to forget when the app
    /// server refused it for good (anything but a `wait` error).
    pub(crate) fn answer(&self, iq: &Element) -> Option<Option<(String, PushRegistration)>> {
        let id = iq.attr("id")?;
        let sent = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.remove(id)?
        };
        let refused = iq.attr("type") == Some("error")
            && StanzaError::from_stanza(iq).is_none_or(|e| e.kind != ErrorType::Wait);
        Some(refused.then_some(sent))
    }
}

/// A notification (XEP-0357 §7): a publish to the registration's node with the summary
/// form, and the publish options the client gave (the app server's secret, often).
fn notification(
    user: &BareJid,
    reg: &PushRegistration,
    id: &str,
    sender: Option<&str>,
    body: Option<&str>,
) -> Element {
    let mut form = Form::new("submit", SUMMARY).field("message-count", "text-single", None, &["1"]);
    if let Some(sender) = sender {
        form = form.field("last-message-sender", "jid-single", None, &[sender]);
    }
    if let Some(body) = body {
        form = form.field("last-message-body", "text-single", None, &[body]);
    }
    let notification = Element::builder("notification", NS_PUSH)
        .append(form.build())
        .build();
    let publish = Element::builder("publish", ns::PUBSUB)
        .attr(stanza::name("node"), reg.node.as_str())
        .append(
            Element::builder("item", ns::PUBSUB)
                .append(notification)
                .build(),
        )
        .build();
    let mut pubsub = Element::builder("pubsub", ns::PUBSUB)
        .append(publish)
        .build();
    if let Ok(options) = reg.options.parse::<Element>() {
        pubsub.append_child(
            Element::builder("publish-options", ns::PUBSUB)
                .append(options)
                .build(),
        );
    }
    Element::builder("iq", ns::CLIENT)
        .attr(stanza::name("type"), "set")
        .attr(stanza::name("id"), id)
        .attr(stanza::name("from"), user.as_str())
        .attr(stanza::name("to"), reg.service.as_str())
        .append(pubsub)
        .build()
}
