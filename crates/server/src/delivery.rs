//! Where a stanza goes: the one place that decides between a local user and another
//! server, and the local end of it (RFC 6121 §8.5 message routing, the XEP-0160 offline
//! store, error replies to senders wherever they are).
//!
//! [`Delivery`] owns the router, the store and the list of our domains, and reaches other
//! domains through a [`Remote`], a handle this module defines and federation fills in
//! ([`NoRemote`] when federation is off), so nothing here knows how server-to-server
//! links work, and nothing above asks whether federation is on.
//!
//! Nothing here needs a client session: a function that cannot deliver hands back an
//! [`Undeliverable`] and the caller decides how its sender hears of it (a session answers
//! its own client directly; everyone else goes through [`Delivery::bounce`]).
//!
//! Messages are archived here, at routing time, for whichever of their ends is a local
//! user who keeps them (see `archive`), and the recipient's copy carries its XEP-0359
//! stanza-id. What must be durable (the archive row, the offline copy, the outbox entry)
//! is submitted to the `journal` and comes back as [`Accepted`]: the caller waits for it
//! before it acknowledges the stanza in any way, so that "accepted" always means "on
//! disk", at the cost of one group commit per read rather than one fsync per message.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::stanza::{self, Condition, ErrorType, StanzaError, ns};
use outpost_store::{ArchiveEntry, BatchWrite, Store, StoreError};
use tracing::{debug, warn};

use crate::archive::{self, Archive};
use crate::caps::Caps;
use crate::carbons;
use crate::config::{self, Config};
use crate::journal::{Journal, Pending};
use crate::push::Pushes;
use crate::requests::Requests;
use crate::router::{Router, ToSession, Undelivered, deliver};
use crate::standby::Standby;

/// A future that a [`Remote`] returns: the durable write it submitted, or why it could not.
pub(crate) type RemoteFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Pending, StanzaError>> + Send + 'a>>;

/// A yes or no that takes a round trip.
pub(crate) type YesNo<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// How stanzas reach other domains. Federation implements it; [`NoRemote`] stands in when
/// federation is off.
pub(crate) trait Remote: Send + Sync {
    /// Whether other domains can be reached at all.
    fn enabled(&self) -> bool;

    /// Sends a stanza from our domain `local` to `remote` best-effort (presence, IQs,
    /// errors). Gives the stanza back when it cannot even be taken on.
    fn send(&self, local: &str, remote: &str, el: Element) -> Result<(), Element>;

    /// Submits a stanza to the durable queue for `remote`; it counts as accepted once the
    /// returned write is committed.
    fn queue<'a>(&'a self, local: &'a str, remote: &'a str, el: &'a Element) -> RemoteFuture<'a>;

    /// Whether `remote`'s server answers from here now (its link from `local` is up, or a
    /// connection attempt gets through within a few seconds).
    fn reachable<'a>(&'a self, local: &'a str, remote: &'a str) -> YesNo<'a>;

    /// Whether the link from `local` to `remote` runs on this server: always, but on a
    /// cluster node that does not hold its lease (taken here if nobody holds it). What
    /// talks to one peer at a time (a site's replication to its hub, a hub's hand-back to
    /// a site) runs where its link does.
    fn runs_link<'a>(&'a self, _local: &'a str, _remote: &'a str) -> YesNo<'a> {
        Box::pin(std::future::ready(true))
    }
}

/// A service of ours with a domain of its own (multi-user chat on `conference.<domain>`):
/// every stanza for that domain goes to it, whoever sends it.
pub(crate) trait Component: Send + Sync {
    /// Takes a stanza without waiting. For a message, the outcome of what it wrote (a
    /// room's archive row), which its sender's acknowledgement waits for. Gives the stanza
    /// back when the service cannot take it now.
    fn take(&self, el: Element) -> Result<Option<Pending>, Element>;
}

/// A registered service: the domain whose users it serves, and the service.
type Service = (String, Arc<dyn Component>);

/// No other domain is reachable: stanzas for one are refused with
/// `remote-server-not-found` (RFC 6120 §8.3.3.16).
pub(crate) struct NoRemote;

impl Remote for NoRemote {
    fn enabled(&self) -> bool {
        false
    }

    fn send(&self, _local: &str, _remote: &str, el: Element) -> Result<(), Element> {
        Err(el)
    }

    fn queue<'a>(&'a self, _: &'a str, _: &'a str, _: &'a Element) -> RemoteFuture<'a> {
        Box::pin(async { Err(StanzaError::new(Condition::RemoteServerNotFound)) })
    }

    fn reachable<'a>(&'a self, _: &'a str, _: &'a str) -> YesNo<'a> {
        Box::pin(async { false })
    }
}

/// A stanza that could not be delivered, and the error its sender should get. Boxed in
/// results: delivery succeeds far more often than not.
#[derive(Debug)]
pub(crate) struct Undeliverable {
    pub(crate) stanza: Element,
    pub(crate) error: StanzaError,
}

fn refused<T>(stanza: Element, condition: Condition) -> Result<T, Box<Undeliverable>> {
    Err(Box::new(Undeliverable {
        stanza,
        error: condition.into(),
    }))
}

/// The writes a routed stanza left to be committed. Whoever routed it waits for them
/// ([`Accepted::settle`]) before acknowledging it to anyone.
#[derive(Default)]
#[must_use = "a stanza is accepted only once its writes are settled"]
pub(crate) struct Accepted(Vec<Commit>);

struct Commit {
    pending: Pending,
    /// Its outcome, once [`Accepted::oldest_done`] has seen it.
    outcome: Option<Result<i64, StoreError>>,
    /// The stanza whose sender is told if the write fails (offline and outbox writes); an
    /// archive write that fails is only logged: the message itself went on.
    on_failure: Option<Element>,
}

impl Accepted {
    fn one(pending: Pending, on_failure: Option<Element>) -> Accepted {
        Accepted(vec![Commit {
            pending,
            outcome: None,
            on_failure,
        }])
    }

    /// A write whose failure is only logged: the stanza it belongs to went on regardless.
    pub(crate) fn logged(pending: Pending) -> Accepted {
        Accepted::one(pending, None)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds another stanza's writes to these.
    pub(crate) fn join(&mut self, other: Accepted) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Waits until every write is committed or failed. The stanzas whose write failed come
    /// back with the error their senders get.
    pub(crate) async fn settle(self) -> Vec<Undeliverable> {
        let mut failed = Vec::new();
        for c in self.0 {
            let outcome = match c.outcome {
                Some(outcome) => outcome,
                None => c.pending.await,
            };
            failed.extend(failure(outcome, c.on_failure));
        }
        failed
    }

    /// Waits until the oldest write has its outcome (the journal commits in order, so
    /// then some writes are done). Cancel-safe.
    pub(crate) async fn oldest_done(&mut self) {
        if let Some(c) = self.0.first_mut()
            && c.outcome.is_none()
        {
            c.outcome = Some((&mut c.pending).await);
        }
    }

    /// Forgets the writes already committed, without waiting for the others; the stanzas
    /// whose write failed come back as from [`Accepted::settle`].
    pub(crate) fn settled_so_far(&mut self) -> Vec<Undeliverable> {
        let mut failed = Vec::new();
        self.0
            .retain_mut(|c| match c.outcome.take().or_else(|| c.pending.ready()) {
                None => true,
                Some(outcome) => {
                    failed.extend(failure(outcome, c.on_failure.take()));
                    false
                }
            });
        failed
    }
}

/// What a write's outcome means for its stanza's sender.
fn failure(outcome: Result<i64, StoreError>, on_failure: Option<Element>) -> Option<Undeliverable> {
    match (outcome, on_failure) {
        (Ok(_), _) => None,
        (Err(e), None) => {
            warn!(error = %e, "cannot archive a message");
            None
        }
        (Err(e), Some(stanza)) => {
            let condition = match e {
                StoreError::QuotaExceeded { .. } => Condition::ResourceConstraint,
                // RFC 6121 §8.5.2.2.1: no such account.
                StoreError::NoSuchAccount => Condition::ServiceUnavailable,
                e => {
                    warn!(error = %e, "cannot store a message");
                    Condition::InternalServerError
                }
            };
            Some(Undeliverable {
                stanza,
                error: condition.into(),
            })
        }
    }
}

pub(crate) struct Delivery {
    /// Our domains; replaced by a reload.
    domains: RwLock<Arc<[String]>>,
    router: Arc<Router>,
    store: Arc<dyn Store>,
    journal: Journal,
    archive: Archive,
    /// The clients seen available and their capabilities (XEP-0115).
    caps: Caps,
    /// Push registrations (XEP-0357).
    pushes: Pushes,
    /// Our services with domains of their own, by domain.
    components: RwLock<HashMap<String, Service>>,
    remote: Arc<dyn Remote>,
    /// The server's own IQs to other servers, waiting for their answers.
    requests: Requests,
    /// On a hub: the sites whose users it serves while their site is unreachable.
    standby: Standby,
}

impl Delivery {
    pub(crate) fn new(
        config: &Config,
        store: Arc<dyn Store>,
        journal: Journal,
        archive: Archive,
        pushes: Pushes,
        remote: Arc<dyn Remote>,
    ) -> Self {
        Delivery {
            domains: RwLock::new(config.domains.clone().into()),
            router: Arc::new(Router::new()),
            store,
            journal,
            archive,
            caps: Caps::default(),
            pushes,
            components: RwLock::new(HashMap::new()),
            remote,
            requests: Requests::default(),
            standby: match config.role {
                config::Role::Hub => Standby::new(config.federation.relay_for.clone()),
                config::Role::Site => Standby::default(),
            },
        }
    }

    /// What the server counts (see `metrics`).
    pub(crate) fn counters(&self) -> &crate::metrics::Counters {
        self.journal.counters()
    }

    pub(crate) fn standby(&self) -> &Standby {
        &self.standby
    }

    /// Whether this server may serve a login to `domain` now; otherwise the host the
    /// client should go to (`see-other-host`). On a hub, a site's user may log in only
    /// while the site cannot be reached from here (see `standby`).
    pub(crate) async fn may_serve(&self, domain: &str) -> Result<(), String> {
        if !self.standby.is_site(domain) || self.standby.is_active(domain) {
            return Ok(());
        }
        if self.site_reachable(domain).await {
            return Err(domain.to_owned());
        }
        if self.standby.start(domain) {
            tracing::info!(site = domain, "the site is unreachable: standing in for it");
        }
        Ok(())
    }

    /// Whether a connection to the site's server opens from here (or did within the last
    /// second).
    pub(crate) async fn site_reachable(&self, domain: &str) -> bool {
        let now = std::time::Instant::now();
        if self.standby.recently_up(domain, now) {
            return true;
        }
        let home = self.home_domain();
        let up = self.remote.reachable(&home, domain).await;
        if up {
            self.standby.saw_up(domain, now);
        }
        up
    }

    /// The site is back and has caught up: stop standing in for it and send its users'
    /// sessions here home. Returns how many were.
    pub(crate) fn end_standby(&self, domain: &str) -> usize {
        if !self.standby.stop(domain) {
            return 0;
        }
        self.send_home(domain)
    }

    /// Another node of the cluster started or ended standby for a site: this node does
    /// the same (ending it, it sends its own sessions of the site's users home).
    pub(crate) fn standby_marked(&self, mark: &crate::standby::Mark) {
        match self.standby.merge(mark) {
            Some(true) => tracing::info!(
                site = %mark.site,
                node = %mark.node,
                "another node stands in for the site: so does this one"
            ),
            Some(false) => {
                self.send_home(&mark.site);
            }
            None => {}
        }
    }

    /// Sends this node's sessions of `domain`'s users home (`see-other-host`).
    fn send_home(&self, domain: &str) -> usize {
        let moved = self.router.tell_domain(domain, || ToSession::Redirect {
            host: domain.to_owned(),
        });
        tracing::info!(
            site = domain,
            sessions = moved,
            "the site is back: its users go home"
        );
        moved
    }

    /// Whether the link from `local` to `remote` runs here (see [`Remote::runs_link`]).
    pub(crate) async fn runs_link(&self, local: &str, remote: &str) -> bool {
        self.remote.runs_link(local, remote).await
    }

    /// Our first configured domain: the one our links to other servers speak for.
    pub(crate) fn home_domain(&self) -> String {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        domains.first().cloned().unwrap_or_default()
    }

    /// The local end of the link that carries a stanza from our domain `domain`: a site
    /// stood in for speaks through the hub's own domain, which its peers trust to relay.
    fn link_local(&self, domain: String) -> String {
        match self.standby.is_active(&domain) {
            true => self.home_domain(),
            false => domain,
        }
    }

    /// Sends an IQ get or set from our `from` domain to another server's domain `to`, and
    /// waits at most `timeout` for its answer: the peer's result or error, or the error
    /// our side makes when it cannot be sent. `None` when nothing came.
    pub(crate) async fn request(
        &self,
        mut iq: Element,
        from: &str,
        to: &str,
        timeout: Duration,
    ) -> Option<Element> {
        stanza::set_attr(&mut iq, "from", from);
        stanza::set_attr(&mut iq, "to", to);
        let pending = self.requests.register(&mut iq, to);
        self.send(iq);
        pending.answer(&self.requests, timeout).await
    }

    /// An IQ result or error addressed to one of our domains: whether it answered one of
    /// [`Delivery::request`]'s (on a cluster, also another node's, which it was sent to).
    pub(crate) fn request_answered(&self, iq: &Element) -> bool {
        self.requests.answer(iq, |d| self.is_ours(d))
    }

    /// This server is the cluster node `node`: answers to other nodes' requests go to
    /// `forward`.
    pub(crate) fn requests_in_cluster(&self, node: &str, forward: crate::requests::Forward) {
        self.requests.in_cluster(node, forward);
    }

    /// Sends what is addressed to `domain` to a service of ours, for the users of `of`,
    /// from now on.
    pub(crate) fn register(&self, domain: &str, of: &str, component: Arc<dyn Component>) {
        let mut components = self.components.write().unwrap_or_else(|p| p.into_inner());
        components.insert(domain.to_owned(), (of.to_owned(), component));
    }

    /// Stops sending `domain`'s stanzas to a service (an external component left).
    pub(crate) fn unregister(&self, domain: &str) {
        let mut components = self.components.write().unwrap_or_else(|p| p.into_inner());
        components.remove(domain);
    }

    pub(crate) fn component(&self, domain: &str) -> Option<Arc<dyn Component>> {
        let components = self.components.read().unwrap_or_else(|p| p.into_inner());
        components.get(domain).map(|(_, c)| c.clone())
    }

    /// Whether `domain` is one of our services (a room service, the proxy, upload, an
    /// external component), which answers its stanzas itself.
    pub(crate) fn is_service(&self, domain: &str) -> bool {
        self.component(domain).is_some()
    }

    /// The domains of the services for the users of `domain`, sorted (disco#items on the
    /// server, XEP-0030 §4).
    pub(crate) fn services_of(&self, domain: &str) -> Vec<String> {
        let components = self.components.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<String> = components
            .iter()
            .filter(|(_, (of, _))| of == domain)
            .map(|(service, _)| service.clone())
            .collect();
        list.sort();
        list
    }

    /// Whether `domain` is one of ours: a domain of our users, or of one of our services.
    pub(crate) fn is_ours(&self, domain: &str) -> bool {
        self.is_local(domain) || self.component(domain).is_some()
    }

    /// A reload: the domains served, the offline quota and whether messages are archived,
    /// from now on.
    pub(crate) fn reload(&self, config: &Config) {
        *self.domains.write().unwrap_or_else(|p| p.into_inner()) = config.domains.clone().into();
        self.journal.set_offline_quota(config.limits.offline_quota);
        self.archive.reload(&config.archive);
        self.pushes.reload(&config.push);
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(crate) fn archive(&self) -> &Archive {
        &self.archive
    }

    pub(crate) fn caps(&self) -> &Caps {
        &self.caps
    }

    pub(crate) fn pushes(&self) -> &Pushes {
        &self.pushes
    }

    /// Wakes the user's devices through their app servers: a message waits (XEP-0357 §7).
    pub(crate) fn wake(&self, user: &BareJid, message: &Element) {
        for notification in self.pushes.notifications(user, message) {
            self.send(notification);
        }
    }

    /// An answer addressed to a user's bare JID, if it is an app server's answer to a
    /// notification: a registration refused for good is forgotten. Returns whether it was.
    pub(crate) async fn push_answer(&self, iq: &Element) -> bool {
        let Some(outcome) = self.pushes.answer(iq) else {
            return false;
        };
        if let Some((user, reg)) = outcome {
            tracing::info!(%user, service = %reg.service, "app server refused a notification; registration removed");
            let _ = self
                .store
                .remove_push(&user, &reg.service, Some(&reg.node))
                .await;
            let left = self
                .pushes
                .of(&user)
                .into_iter()
                .filter(|r| *r != reg)
                .collect();
            self.pushes.set(&user, left);
        }
        true
    }

    /// Whether `domain`'s users are served here now: one of our domains, or on a hub, a
    /// site it stands in for.
    pub(crate) fn is_local(&self, domain: &str) -> bool {
        self.is_home(domain) || self.standby.is_active(domain)
    }

    /// Whether `domain` is one of our configured domains (not one stood in for).
    pub(crate) fn is_home(&self, domain: &str) -> bool {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        config::is_one_of(&domains, domain)
    }

    /// Whether stanzas for `domain` can go anywhere: it is ours, or other domains are
    /// reachable.
    pub(crate) fn reaches(&self, domain: &str) -> bool {
        self.is_ours(domain) || self.remote.enabled()
    }

    /// A message for `to`, wherever it is: a local user's resources or offline store (see
    /// [`Delivery::route_local_message`]), or the durable queue for another domain (with an
    /// XEP-0359 origin-id, so retries can be recognised); archived for its local ends.
    pub(crate) async fn message(
        &self,
        mut el: Element,
        to: Jid,
    ) -> Result<Accepted, Box<Undeliverable>> {
        // Our services (a room) give their own stanza-ids; anyone else's claiming to be
        // ours are forged.
        let from_service = sender_domain(&el).is_some_and(|d| self.component(&d).is_some());
        if !from_service {
            strip_our_stanza_ids(&mut el, |d| self.is_ours(d));
        }
        let copies = carbons::eligible(&el);
        carbons::strip_private(&mut el);
        let domain = to.domain().as_str();
        if let Some(service) = self.component(domain) {
            return self.to_component(&*service, el);
        }
        // A room's private message already reached every client in the room (XEP-0280
        // §6.1): no received copies, but the sender's other clients still see it went.
        let received_copies = copies && !el.has_child("x", outpost_proto::muc::NS_USER);
        let local_recipient = self.is_local(domain);
        let local = match local_recipient {
            true => None,
            false => match sender_domain(&el).filter(|d| self.is_ours(d)) {
                Some(local) => {
                    let local = self.link_local(local);
                    ensure_origin_id(&mut el);
                    Some(local)
                }
                None => return refused(el, Condition::NotAllowed),
            },
        };
        let entry = self.archive_entry(&el, &to).await;
        if copies {
            self.sent_carbons(&el);
        }
        if let Some(e) = entry.as_ref().filter(|e| e.in_recipient) {
            el.append_child(stanza_id(&e.recipient, e.id));
        }
        let mut accepted = match local {
            None => self.route_local_message(el, to, received_copies).await?,
            Some(local) => match self.remote.queue(&local, domain, &el).await {
                Ok(pending) => Accepted::one(pending, Some(el)),
                Err(error) => return Err(Box::new(Undeliverable { stanza: el, error })),
            },
        };
        if let Some(entry) = entry {
            let pending = self.journal.submit(BatchWrite::Archive(entry)).await;
            accepted.join(Accepted::one(pending, None));
        }
        Ok(accepted)
    }

    /// A message our hub archived for a user of ours while it stood in for us, handed back
    /// with the stanza-id it gave: delivered as [`Delivery::message`] delivers, but not
    /// archived again (the hub's archive row, merged back, keeps it under that id).
    pub(crate) async fn handed_back(
        &self,
        el: Element,
        to: Jid,
    ) -> Result<Accepted, Box<Undeliverable>> {
        self.route_local_message(el, to, true).await
    }

    /// A message for one of our services: taken, or refused when the service is busy.
    fn to_component(
        &self,
        service: &dyn Component,
        el: Element,
    ) -> Result<Accepted, Box<Undeliverable>> {
        match service.take(el) {
            Ok(Some(pending)) => Ok(Accepted::logged(pending)),
            Ok(None) => Ok(Accepted::default()),
            Err(el) => Err(Box::new(Undeliverable {
                stanza: el,
                error: StanzaError::with_type(ErrorType::Wait, Condition::ResourceConstraint),
            })),
        }
    }

    /// The archive row for a message, if one of its ends is a local user who keeps it.
    async fn archive_entry(&self, el: &Element, to: &Jid) -> Option<ArchiveEntry> {
        if !self.archive.enabled() || !archive::worth_archiving(el) {
            return None;
        }
        let from = el.attr("from").and_then(|f| Jid::new(f).ok())?.to_bare();
        let to = to.to_bare();
        let in_sender = self.archives(&from, &to).await;
        let in_recipient = self.archives(&to, &from).await;
        if !in_sender && !in_recipient {
            return None;
        }
        let mut text = Vec::new();
        outpost_proto::xml::write_stanza(el, &mut text).ok()?;
        Some(ArchiveEntry {
            id: self.archive.next_id(crate::clock::now_ms()),
            sender: from.to_string(),
            recipient: to.to_string(),
            in_sender,
            in_recipient,
            stanza: String::from_utf8(text).ok()?,
        })
    }

    /// Whether `owner` is a local user whose archive keeps what is exchanged with `with`.
    async fn archives(&self, owner: &BareJid, with: &BareJid) -> bool {
        if owner.node().is_none() || !self.is_local(owner.domain().as_str()) {
            return false;
        }
        let prefs = self.archive.prefs(owner.as_str());
        match archive::decision(prefs.as_deref(), with.as_str()) {
            Some(keep) => keep,
            // "roster": only with contacts, which takes a look at the roster.
            None => matches!(
                self.store.roster_item(owner.as_str(), with.as_str()).await,
                Ok(Some(_))
            ),
        }
    }

    /// Submits a stanza from our domain `local` to the durable queue for `remote`.
    pub(crate) async fn queue_remote(
        &self,
        local: &str,
        remote: &str,
        el: &Element,
    ) -> Result<Accepted, StanzaError> {
        let local = self.link_local(local.to_owned());
        let pending = self.remote.queue(&local, remote, el).await?;
        Ok(Accepted::one(pending, Some(el.clone())))
    }

    /// The sender's other clients that asked for carbons get a `sent` copy (XEP-0280).
    fn sent_carbons(&self, el: &Element) {
        let Some(from) = el.attr("from").and_then(|f| FullJid::new(f).ok()) else {
            return;
        };
        if !self.is_local(from.domain().as_str()) {
            return;
        }
        let bare = from.to_bare();
        for (jid, tx) in self
            .router
            .carbon_targets(&bare, std::slice::from_ref(&from))
        {
            let _ = deliver(
                &tx,
                ToSession::Stanza(carbons::copy("sent", &bare, &jid, el)),
            );
        }
    }

    /// The recipient's clients that asked for carbons and did not get the message itself
    /// (`got_it`) get a `received` copy (XEP-0280).
    fn received_carbons(&self, el: &Element, bare: &BareJid, got_it: &[FullJid]) {
        for (jid, tx) in self.router.carbon_targets(bare, got_it) {
            let _ = deliver(
                &tx,
                ToSession::Stanza(carbons::copy("received", bare, &jid, el)),
            );
        }
    }

    /// Delivers a message to a local address: to the full JID if bound, else by the bare JID
    /// rules, else to the offline store. Online delivery touches no storage. `copies`: the
    /// user's other clients get carbons of it.
    async fn route_local_message(
        &self,
        el: Element,
        to: Jid,
        copies: bool,
    ) -> Result<Accepted, Box<Undeliverable>> {
        let ty = stanza::stanza_type(&el).to_owned();
        let bare = to.to_bare();
        if bare.node().is_none() {
            // Messages to the server itself: no service answers them.
            return refused(el, Condition::ServiceUnavailable);
        }
        let el = match to.try_as_full() {
            Ok(full) => {
                // Copies are made only for a user with other clients that want them.
                let carbon = match copies {
                    true => self
                        .router
                        .carbon_targets(&bare, std::slice::from_ref(full)),
                    false => Vec::new(),
                };
                let original = (!carbon.is_empty()).then(|| el.clone());
                match self.router.send_to_full(full, ToSession::Stanza(el)) {
                    Ok(()) => {
                        for (jid, tx) in &carbon {
                            if let Some(el) = &original {
                                let copy = carbons::copy("received", &bare, jid, el);
                                let _ = deliver(tx, ToSession::Stanza(copy));
                            }
                        }
                        return Ok(Accepted::default());
                    }
                    Err(Undelivered::Full(ToSession::Stanza(el))) => {
                        // The resource is bound but not reading: keep the message for later.
                        return self.store_offline(el, &bare).await;
                    }
                    Err(Undelivered::NotBound(ToSession::Stanza(el))) => match ty.as_str() {
                        // RFC 6121 §8.5.3.2.1: no such resource.
                        "groupchat" => return refused(el, Condition::ServiceUnavailable),
                        "headline" | "error" => return Ok(Accepted::default()),
                        // chat and normal go on as if sent to the bare JID.
                        _ => el,
                    },
                    Err(_) => return Ok(Accepted::default()),
                }
            }
            Err(_) => el,
        };
        self.route_to_bare(el, bare, &ty, copies).await
    }

    async fn route_to_bare(
        &self,
        el: Element,
        bare: BareJid,
        ty: &str,
        copies: bool,
    ) -> Result<Accepted, Box<Undeliverable>> {
        if ty == "groupchat" {
            return refused(el, Condition::ServiceUnavailable);
        }
        let targets = self.router.message_targets(&bare, ty == "headline");
        if copies && !targets.is_empty() {
            let got_it: Vec<FullJid> = targets.iter().map(|(j, _)| j.clone()).collect();
            self.received_carbons(&el, &bare, &got_it);
        }
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
        match rest {
            Some(el) if !delivered && !matches!(ty, "headline" | "error") => {
                self.store_offline(el, &bare).await
            }
            _ => Ok(Accepted::default()),
        }
    }

    /// Keeps a message for a local user who cannot take it now, or says why not. The
    /// offline copy is submitted to the journal; it is kept once that write settles.
    pub(crate) async fn store_offline(
        &self,
        mut el: Element,
        user: &BareJid,
    ) -> Result<Accepted, Box<Undeliverable>> {
        match self.store.account_exists(user.as_str()).await {
            Ok(true) => {}
            // RFC 6121 §8.5.2.2.1: no such account.
            Ok(false) => return refused(el, Condition::ServiceUnavailable),
            Err(e) => {
                warn!(error = %e, "cannot check account");
                return refused(el, Condition::InternalServerError);
            }
        }
        if let Some(from) = el.attr("from") {
            match self.store.blocklist(user.as_str()).await {
                Ok(list) if crate::blocking::matches(&list, from) => {
                    return refused(el, Condition::ServiceUnavailable);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot read block list"),
            }
        }
        if archive::forbids_storing(&el) && el.attr("type") != Some("error") {
            // XEP-0334: the sender asked that it be stored nowhere; it cannot be delivered.
            return refused(el, Condition::ServiceUnavailable);
        }
        if !archive::worth_keeping(&el, false) && el.attr("type") != Some("error") {
            return Ok(Accepted::default());
        }
        let domain = user.domain().as_str();
        let stamped = el
            .children()
            .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(domain));
        if !stamped {
            el.append_child(delay_stamp(domain, "Offline storage"));
        }
        let mut text = Vec::new();
        if outpost_proto::xml::write_stanza(&el, &mut text).is_err() {
            return refused(el, Condition::NotAcceptable);
        }
        let write = BatchWrite::Offline {
            user: user.to_string(),
            stanza: String::from_utf8_lossy(&text).into_owned(),
        };
        // The user may have come online while we were storing: make sure the message
        // does not wait for the next login.
        let router = self.router.clone();
        let owner = user.clone();
        let hook: crate::journal::Hook = Box::new(move |outcome| {
            if outcome.is_ok()
                && let Some((_, tx)) = router.message_targets(&owner, false).first()
            {
                let _ = deliver(tx, ToSession::FlushOffline);
            }
        });
        let pending = self.journal.submit_with(write, Some(hook)).await;
        if el.attr("type") != Some("error") {
            self.wake(user, &el);
        }
        Ok(Accepted::one(pending, Some(el)))
    }

    /// Sends a stanza best-effort to its `to`: a bound local resource through the router,
    /// or a remote address, from our domain in its `from`. Nothing is stored: for
    /// presence, IQs and the server's replies. What cannot reach another domain is
    /// answered, when it may be (RFC 6120 §8.3.3.16, §8.3.3.17).
    pub(crate) fn send(&self, el: Element) {
        let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        if let Some(service) = self.component(to.domain().as_str()) {
            if let Err(el) = service.take(el) {
                let busy = StanzaError::with_type(ErrorType::Wait, Condition::ResourceConstraint);
                self.bounce(&el, busy);
            }
            return;
        }
        let domain = to.domain().as_str();
        // A site stood in for is local for its users, but its server is still the site:
        // what is addressed to the domain itself (replication answers) goes there.
        let to_site_server = to.node().is_none() && !self.is_home(domain);
        if self.is_local(domain) && !to_site_server {
            if to.node().is_none() && matches!(el.attr("type"), Some("result" | "error")) {
                // Our own error about a request of ours that could not leave.
                self.request_answered(&el);
                return;
            }
            if let Ok(full) = FullJid::try_from(to) {
                let _ = self.router.send_to_full(&full, ToSession::Stanza(el));
            }
            return;
        }
        let Some(local) = sender_domain(&el).filter(|d| self.is_ours(d)) else {
            debug!("not sending a stanza for another domain from a domain not ours");
            return;
        };
        let local = self.link_local(local);
        if let Err(el) = self.remote.send(&local, to.domain().as_str(), el) {
            let condition = match self.remote.enabled() {
                // The link is backed up: best-effort means this one is dropped.
                true => Condition::RemoteServerTimeout,
                false => Condition::RemoteServerNotFound,
            };
            self.bounce(&el, condition.into());
        }
    }

    /// Sends a headline best-effort, like [`Delivery::send`], except that one to a local bare
    /// JID goes to each of its available resources with a non-negative priority (RFC 6121
    /// §8.5.2.1.1) instead of nowhere: pubsub events to a subscriber's bare JID.
    pub(crate) fn headline(&self, el: Element) {
        let to = el.attr("to").and_then(|t| BareJid::new(t).ok());
        match to.filter(|b| self.is_local(b.domain().as_str())) {
            Some(bare) => {
                for (_, tx) in self.router.message_targets(&bare, true) {
                    let _ = deliver(&tx, ToSession::Stanza(el.clone()));
                }
            }
            None => self.send(el),
        }
    }

    /// Sends a presence to every available resource of a bare JID: local resources through
    /// the router, a remote contact's server best-effort (RFC 6121 §4.2.2). The `to` stays
    /// the bare JID, as it does for messages (§8.5.2.1.1).
    pub(crate) fn presence_to_bare(&self, el: &Element, to: &BareJid) {
        let mut addressed = el.clone();
        stanza::set_attr(&mut addressed, "to", to.as_str());
        if !self.is_local(to.domain().as_str()) {
            // Another server, or a service of ours.
            self.send(addressed);
            return;
        }
        for (_, tx) in self.router.available(to) {
            let _ = deliver(&tx, ToSession::Stanza(addressed.clone()));
        }
    }

    /// Sends a presence to a JID: a full JID directly, a bare one to each available
    /// resource.
    pub(crate) fn presence_to(&self, el: &Element, to: &Jid) {
        match to.try_as_full() {
            Ok(full) => {
                let mut copy = el.clone();
                stanza::set_attr(&mut copy, "to", full.as_str());
                self.send(copy);
            }
            Err(bare) => self.presence_to_bare(el, bare),
        }
    }

    /// Sends an error reply for `el` to its sender, wherever it is: a local full JID through
    /// the router, a remote one over federation. Errors, results and presence are never
    /// answered with an error (RFC 6120 §8.3.1).
    pub(crate) fn bounce(&self, el: &Element, error: StanzaError) {
        if stanza::may_answer_with_error(el) {
            self.send(stanza::error_reply(el, &error));
        }
    }

    /// Tells a local sender that a message it sent will never arrive, keeping the error in
    /// its offline store if it is not online: used when a queued stanza's lifetime ends,
    /// days after it was sent. The error carries the original body (RFC 6120 §8.3.1 allows
    /// it), so the user knows which message failed.
    pub(crate) async fn bounce_durably(&self, el: &Element, error: StanzaError) {
        if matches!(el.attr("type"), Some("error" | "result")) {
            return;
        }
        let mut reply = stanza::error_reply(el, &error);
        if el.name() != "message" {
            self.send(reply);
            return;
        }
        for body in el.children().filter(|c| c.is("body", ns::CLIENT)) {
            reply.append_child(body.clone());
        }
        let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return;
        };
        if !self.is_local(to.domain().as_str()) {
            return;
        }
        let bare = to.to_bare();
        let reply = match to.try_as_full() {
            Ok(full) => match self.router.send_to_full(full, ToSession::Stanza(reply)) {
                Ok(()) => return,
                Err(
                    Undelivered::NotBound(ToSession::Stanza(r))
                    | Undelivered::Full(ToSession::Stanza(r)),
                ) => r,
                Err(_) => return,
            },
            Err(_) => reply,
        };
        if let Ok(accepted) = self.store_offline(reply, &bare).await {
            let _ = accepted.settle().await;
        }
    }
}

/// The domain of a stanza's `from`.
fn sender_domain(el: &Element) -> Option<String> {
    el.attr("from")
        .and_then(|f| Jid::new(f).ok())
        .map(|f| f.domain().as_str().to_owned())
}

/// An XEP-0359 stanza-id given by `by`, the archive that keeps the message.
fn stanza_id(by: &str, id: i64) -> Element {
    Element::builder("stanza-id", ns::SID)
        .attr(stanza::name("by"), by)
        .attr(stanza::name("id"), archive::encode_id(id))
        .build()
}

/// Removes the stanza-ids that claim to come from one of our entities: only we give those,
/// and a client could forge one to confuse the recipient's deduplication (XEP-0359 §5).
fn strip_our_stanza_ids(el: &mut Element, ours: impl Fn(&str) -> bool) {
    let forged = |c: &Element| {
        c.is("stanza-id", ns::SID)
            && c.attr("by")
                .and_then(|b| Jid::new(b).ok())
                .is_none_or(|b| ours(b.domain().as_str()))
    };
    if el.children().any(forged) {
        // minidom has no `retain` for children; rebuilding the list is rare.
        let kept: Vec<Element> = el.children().filter(|c| !forged(c)).cloned().collect();
        while el.remove_child("stanza-id", ns::SID).is_some() {}
        for c in kept.into_iter().filter(|c| c.is("stanza-id", ns::SID)) {
            el.append_child(c);
        }
    }
}

/// An XEP-0203 delay stamp for now, from `domain`.
fn delay_stamp(domain: &str, reason: &str) -> Element {
    delay_at(domain, crate::clock::now_ms(), reason)
}

/// An XEP-0203 delay stamp for the time `ms` (Unix milliseconds), from `domain`.
pub(crate) fn delay_at(domain: &str, ms: i64, reason: &str) -> Element {
    Element::builder("delay", ns::DELAY)
        .attr(stanza::name("from"), domain)
        .attr(stanza::name("stamp"), crate::clock::format_ms(ms))
        .append(reason)
        .build()
}

/// Gives a message an XEP-0359 origin-id if it has none, so that every retry of it carries
/// the same id and the receiving server can drop duplicates.
pub(crate) fn ensure_origin_id(el: &mut Element) {
    if el.name() != "message" || el.has_child("origin-id", ns::SID) {
        return;
    }
    el.append_child(
        Element::builder("origin-id", ns::SID)
            .attr(stanza::name("id"), crate::ids::random_id(20))
            .build(),
    );
}
