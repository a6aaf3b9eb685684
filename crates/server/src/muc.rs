//! The multi-user chat service (XEP-0045) of one domain, at `conference.<domain>`: a task
//! that owns the rooms (`outpost_proto::muc::Room`, sans IO) and carries out what they say,
//! so each room handles one stanza at a time and its occupants see everything in the same
//! order.
//!
//! Rooms reach their occupants through `delivery`, wherever they are: a room's messages to
//! an occupant on another server go through the durable queue of the federation link, so
//! during a WAN cut the site's own occupants go on talking and the remote ones get what was
//! said once the link is back; what they said reaches the room the same way. A message is
//! archived under the room's JID (XEP-0313 on the room) before its sender's acknowledgement.
//!
//! Stored: each room's configuration, subject and affiliations. Persistent rooms come
//! back after a restart with their recent history read from the archive; temporary rooms
//! are forgotten when their last occupant leaves.
//!
//! On a cluster node the service is *shared* ([`start_shared`]): every node runs one, each
//! holding the rooms it owns (`cluster::services` routes each room's stanzas to its owner),
//! so a room is read from the store when first used, not from a list loaded at the start
//! that other nodes' rooms would outdate; a room whose ownership moved is evicted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use outpost_proto::muc::{Affiliation, Context, Effect, NS_MUC, Room, RoomConfig, Said};
use outpost_proto::stanza::{self, Condition, StanzaError, ns};
use outpost_store::{ArchiveEntry, ArchiveQuery, BatchWrite, StoreError, StoredRoom};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive;
use crate::config::{MucConfig, RoomCreation};
use crate::copies::{Copies, Taken};
use crate::delivery::{Component, Delivery};
use crate::journal::Pending;

/// Stanzas waiting for the service; a full queue answers `resource-constraint`.
const QUEUE: usize = 4096;

type Done = oneshot::Sender<Result<i64, StoreError>>;

enum Request {
    Stanza {
        el: Element,
        /// For a message: settled once what the room wrote is committed.
        done: Option<Done>,
        /// Its number, for a shared service (see [`Gone`]).
        seq: u64,
    },
    /// This node no longer owns the room (shared service): forget it, not its store.
    Evict(BareJid),
}

/// The handle delivery holds: a queue into the service's task.
pub(crate) struct MucService {
    tx: mpsc::Sender<Request>,
}

impl MucService {
    /// Queues a stanza numbered `seq` (for a shared service; 0 otherwise); `done` is
    /// settled once the stanza is handled (a message: once what the room wrote is
    /// committed). A full queue gives the stanza back.
    pub(crate) fn submit(&self, el: Element, done: Option<Done>, seq: u64) -> Result<(), Element> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Request::Stanza { el, done, seq });
                Ok(())
            }
            Err(_) => Err(el),
        }
    }

    /// Forgets a room this node no longer owns (its occupants join again at the owner).
    pub(crate) async fn evict(&self, room: BareJid) {
        let _ = self.tx.send(Request::Evict(room)).await;
    }
}

impl Component for MucService {
    fn take(&self, el: Element) -> Result<Option<Pending>, Element> {
        let (done, pending) = match el.name() {
            "message" => {
                let (tx, pending) = Pending::channel();
                (Some(tx), Some(pending))
            }
            _ => (None, None),
        };
        self.submit(el, done, 0).map(|()| pending)
    }
}

/// Starts the service at `service` for users of `domain`, registers it with delivery,
/// and returns its task.
pub(crate) async fn start(
    d: Arc<Delivery>,
    service: String,
    domain: String,
    config: MucConfig,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, rx) = mpsc::channel(QUEUE);
    d.register(&service, &domain, Arc::new(MucService { tx }));
    let stored = match d.store().muc_rooms().await {
        Ok(rooms) => rooms
            .into_iter()
            .filter(|r| r.jid.ends_with(&format!("@{service}")))
            .map(|r| (r.jid.clone(), r))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot read rooms");
            HashMap::new()
        }
    };
    let state = Service {
        d,
        service,
        domain,
        config,
        stored,
        rooms: HashMap::new(),
        shared: None,
    };
    state.run(rx, shutdown)
}

/// A room a shared service forgot (destroyed, or a temporary room its last occupant
/// left), with the number of the stanza that ended it: if no later stanza went to the
/// service for that room, the node may give the room's lease back.
pub(crate) type Gone = (BareJid, u64);

/// The service on a cluster node: not registered with delivery (the cluster's router is,
/// in its place), holding only the rooms this node owns, each read from the store when
/// first used; the rooms it forgets are told to `gone`. Returns its handle and its task.
pub(crate) fn start_shared(
    d: Arc<Delivery>,
    service: String,
    domain: String,
    config: MucConfig,
    shutdown: CancellationToken,
    gone: mpsc::UnboundedSender<Gone>,
) -> (
    Arc<MucService>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let state = Service {
        d,
        service,
        domain,
        config,
        stored: HashMap::new(),
        rooms: HashMap::new(),
        shared: Some(Shared { gone, seq: 0 }),
    };
    (Arc::new(MucService { tx }), state.run(rx, shutdown))
}

struct Service {
    d: Arc<Delivery>,
    service: String,
    /// The domain whose users are local here.
    domain: String,
    config: MucConfig,
    /// Rooms in the store not loaded yet (loaded on first use).
    stored: HashMap<String, StoredRoom>,
    rooms: HashMap<BareJid, Room>,
    /// A cluster node's: rooms come from the store when first used, and leave when
    /// another node takes them.
    shared: Option<Shared>,
}

/// What a shared service keeps to say which rooms it forgot.
struct Shared {
    gone: mpsc::UnboundedSender<Gone>,
    /// The number of the stanza being handled.
    seq: u64,
}

impl Service {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        info!(service = %self.service, rooms = self.stored.len(), "multi-user chat service ready");
        loop {
            let request = tokio::select! {
                () = shutdown.cancelled() => return,
                r = rx.recv() => r,
            };
            match request {
                None => return,
                Some(Request::Evict(jid)) => {
                    if self.rooms.remove(&jid).is_some() {
                        info!(room = %jid, "another node owns the room now");
                    }
                }
                Some(Request::Stanza { el, done, seq }) => {
                    if let Some(shared) = &mut self.shared {
                        shared.seq = seq;
                    }
                    Box::pin(self.on_request(el, done)).await;
                }
            }
        }
    }

    async fn on_request(&mut self, el: Element, done: Option<Done>) {
        let from = el.attr("from").and_then(|f| FullJid::new(f).ok());
        let to = el.attr("to").and_then(|t| Jid::new(t).ok());
        let (Some(from), Some(to)) = (from, to) else {
            settle(done, Ok(0));
            return;
        };
        if to.node().is_none() {
            self.service_iq(&from, &el).await;
            settle(done, Ok(0));
            return;
        }
        let room_jid = to.to_bare();
        if el.name() == "iq" && to.resource().is_none() && el.has_child("query", ns::MAM) {
            self.archive_query(&room_jid, &from, &el).await;
            settle(done, Ok(0));
            return;
        }
        if !self.room_ready(&room_jid, &from, &el).await {
            settle(done, Ok(0));
            return;
        }
        let cx = self.context();
        let effects = match self.rooms.get_mut(&room_jid) {
            Some(room) => room.handle(&from, &el, &cx),
            None => Vec::new(),
        };
        let written = self.carry_out(&room_jid, effects).await;
        settle(done, written);
    }

    fn context(&self) -> Context {
        let now = crate::clock::now_ms();
        let id = self.d.archive().next_id(now);
        Context {
            now_ms: now,
            id,
            stanza_id: archive::encode_id(id),
            stamp: crate::clock::format_ms(now),
        }
    }

    /// Whether the room exists (loaded from the store, or created by this join); refuses
    /// what is for a room that does not.
    async fn room_ready(&mut self, jid: &BareJid, from: &FullJid, el: &Element) -> bool {
        if self.rooms.contains_key(jid) || self.load(jid).await {
            return true;
        }
        let joining = el.name() == "presence"
            && el.attr("type").is_none()
            && el.has_child("x", NS_MUC)
            && el
                .attr("to")
                .and_then(|t| Jid::new(t).ok())
                .is_some_and(|t| t.resource().is_some());
        let allowed = match self.config.create_rooms {
            RoomCreation::Anyone => true,
            RoomCreation::Local => from.domain().as_str() == self.domain,
        };
        if joining && allowed {
            let room = Room::new(
                jid.clone(),
                RoomConfig::default(),
                BTreeMap::new(),
                self.config.history_messages,
            );
            self.rooms.insert(jid.clone(), room);
            return true;
        }
        let error = match joining {
            // XEP-0045 §10.1.1: creating rooms is for some users only.
            true => StanzaError::new(Condition::NotAllowed),
            false => StanzaError::new(Condition::ItemNotFound),
        };
        if stanza::may_answer_with_error(el) {
            self.d.send(stanza::error_reply(el, &error));
        }
        false
    }

    /// Loads a stored room not in memory yet: from the list read at the start, or (shared)
    /// from the store. Whether it exists.
    async fn load(&mut self, jid: &BareJid) -> bool {
        let stored = match self.shared {
            None => self.stored.remove(jid.as_str()),
            Some(_) => match self.d.store().muc_room(jid.as_str()).await {
                Ok(room) => room,
                Err(e) => {
                    warn!(error = %e, room = %jid, "cannot read a room");
                    None
                }
            },
        };
        let Some(stored) = stored else {
            return false;
        };
        let room = self.restore(jid.clone(), &stored).await;
        self.rooms.insert(jid.clone(), room);
        true
    }

    /// A stored room, with the recent history its archive holds.
    async fn restore(&self, jid: BareJid, stored: &StoredRoom) -> Room {
        let config = RoomConfig::from_pairs(&stored.config);
        let affiliations = stored
            .affiliations
            .iter()
            .filter_map(|(j, a)| Some((BareJid::new(j).ok()?, Affiliation::parse(a)?)))
            .collect();
        let mut room = Room::new(
            jid.clone(),
            config,
            affiliations,
            self.config.history_messages,
        );
        let value = |key: &str| {
            stored
                .config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        if let (Some(subject), Some(by)) = (value("subject"), value("subject_by")) {
            room.set_subject(subject, by);
        }
        let q = ArchiveQuery {
            owner: jid.as_str(),
            with: None,
            after: None,
            before: None,
            limit: u32::try_from(self.config.history_messages).unwrap_or(u32::MAX),
            newest_first: true,
        };
        let mut said: Vec<Said> = match self.d.store().archive_page(&q).await {
            Ok(page) => page
                .into_iter()
                .filter_map(|m| {
                    let mut message: Element = m.stanza.parse().ok()?;
                    // History is what was said; the subject is kept with the room.
                    if !message.has_child("body", ns::CLIENT) {
                        return None;
                    }
                    stanza::remove_attr(&mut message, "to");
                    let at_ms = archive::time_of(m.id);
                    Some(Said {
                        at_ms,
                        stamp: crate::clock::format_ms(at_ms),
                        message,
                    })
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read a room's history");
                Vec::new()
            }
        };
        said.reverse();
        room.restore_history(said);
        room
    }

    /// Carries out what a room said, in order: sends, the archive row, stored state. A
    /// message that cannot reach a local occupant's session drops that client from the
    /// room (XEP-0045 status 333), which the room answers with more to carry out. The
    /// copies of a message for occupants on other nodes of a cluster cross to each node
    /// once (see `copies`). Returns the outcome of the archive write, if any.
    async fn carry_out(
        &mut self,
        room_jid: &BareJid,
        effects: Vec<Effect>,
    ) -> Result<i64, StoreError> {
        let mut queue: std::collections::VecDeque<Effect> = effects.into();
        let mut archived: Option<Pending> = None;
        let mut copies = Copies::default();
        loop {
            let effect = match queue.pop_front() {
                Some(Effect::Send(el)) => match copies.take(self.d.router(), el) {
                    Taken::Joined => continue,
                    Taken::Now(el) => {
                        self.send_one(room_jid, el, &mut queue).await;
                        continue;
                    }
                    Taken::After(el) => Some(Effect::Send(el)),
                },
                effect => effect,
            };
            // What does not join the run goes after it.
            for el in copies.send() {
                self.send_one(room_jid, el, &mut queue).await;
            }
            let Some(effect) = effect else {
                match queue.is_empty() {
                    true => break,
                    false => continue,
                }
            };
            match effect {
                Effect::Send(el) => match copies.take(self.d.router(), el) {
                    Taken::Joined => {}
                    Taken::Now(el) | Taken::After(el) => {
                        self.send_one(room_jid, el, &mut queue).await;
                    }
                },
                Effect::Archive { id, from, message } => {
                    archived = Some(self.archive(room_jid, id, from, &message).await);
                }
                Effect::SaveRoom => self.save_room(room_jid).await,
                Effect::SaveAffiliation { jid, affiliation } => {
                    self.save_affiliation(room_jid, &jid, affiliation).await;
                }
                Effect::Destroyed => self.forget(room_jid).await,
            }
        }
        match archived {
            Some(pending) => pending.await,
            None => Ok(0),
        }
    }

    async fn save_affiliation(&self, room: &BareJid, jid: &BareJid, affiliation: Affiliation) {
        let value = (affiliation != Affiliation::None).then(|| affiliation.as_str());
        let now = crate::clock::now_ms();
        let store = self.d.store();
        let saved = store.muc_set_affiliation(room.as_str(), jid.as_str(), value, now);
        if let Err(e) = saved.await {
            warn!(error = %e, "cannot store an affiliation");
        }
    }

    /// Sends a room's stanza; an occupant whose session is gone leaves the room, and what
    /// the room says of it joins `queue`.
    async fn send_one(
        &mut self,
        room_jid: &BareJid,
        el: Element,
        queue: &mut std::collections::VecDeque<Effect>,
    ) {
        if let Some(gone) = self.send(el).await
            && let Some(room) = self.rooms.get_mut(room_jid)
        {
            queue.extend(room.drop_client(&gone));
        }
    }

    /// Sends a room's stanza. Messages go through delivery like any message (to a remote
    /// occupant: the durable queue); the rest best-effort. Returns the occupant whose
    /// session is gone, if that is why a message could not be delivered.
    async fn send(&self, el: Element) -> Option<FullJid> {
        let to = el.attr("to").and_then(|t| Jid::new(t).ok())?;
        if el.name() != "message" {
            self.d.send(el);
            return None;
        }
        match self.d.message(el, to.clone()).await {
            Ok(accepted) => {
                // Room traffic is not acknowledged to anyone: its writes settle in the
                // background of the journal.
                drop(accepted);
                None
            }
            Err(u) if self.d.is_local(to.domain().as_str()) => {
                let gone = matches!(u.error.condition, Condition::ServiceUnavailable);
                gone.then(|| to.try_into_full().ok()).flatten()
            }
            Err(_) => None,
        }
    }

    async fn archive(&self, room: &BareJid, id: i64, from: String, message: &Element) -> Pending {
        let mut text = Vec::new();
        let _ = outpost_proto::xml::write_stanza(message, &mut text);
        let entry = ArchiveEntry {
            id,
            sender: from,
            recipient: room.to_string(),
            in_sender: false,
            in_recipient: true,
            stanza: String::from_utf8_lossy(&text).into_owned(),
        };
        self.d.journal().submit(BatchWrite::Archive(entry)).await
    }

    async fn save_room(&self, jid: &BareJid) {
        let Some(room) = self.rooms.get(jid) else {
            return;
        };
        let mut pairs = room.config().to_pairs();
        if let Some((subject, by)) = room.subject() {
            pairs.push(("subject".to_owned(), subject.to_owned()));
            pairs.push(("subject_by".to_owned(), by.to_owned()));
        }
        if let Err(e) = self
            .d
            .store()
            .muc_save_room(jid.as_str(), &pairs, crate::clock::now_ms())
            .await
        {
            warn!(error = %e, "cannot store a room");
        }
    }

    /// A room is gone: its state and its archive.
    async fn forget(&mut self, jid: &BareJid) {
        self.rooms.remove(jid);
        if let Some(shared) = &self.shared {
            let _ = shared.gone.send((jid.clone(), shared.seq));
        }
        let store = self.d.store();
        if let Err(e) = store.muc_delete_room(jid.as_str()).await {
            warn!(error = %e, "cannot forget a room");
        }
        if let Err(e) = store.archive_clear(jid.as_str()).await {
            warn!(error = %e, "cannot clear a room's archive");
        }
    }

    /// A query of a room's archive (XEP-0313 on rooms): for its occupants, and for the
    /// members of a members-only room.
    async fn archive_query(&mut self, room_jid: &BareJid, from: &FullJid, el: &Element) {
        let loaded = self.rooms.contains_key(room_jid) || self.load(room_jid).await;
        let allowed = loaded
            && self
                .rooms
                .get(room_jid)
                .is_some_and(|room| room.may_read_archive(from));
        if !allowed {
            self.d
                .send(stanza::error_reply(el, &Condition::Forbidden.into()));
            return;
        }
        if el.attr("type") == Some("get") {
            self.d.send(crate::mam::form_reply(el));
            return;
        }
        let requester = Jid::from(from.clone());
        match crate::mam::query(&self.d, room_jid.as_str(), &requester, el, true).await {
            Ok(answer) => {
                for result in answer.results {
                    self.d.send(result);
                }
                self.d.send(answer.fin);
            }
            Err(e) => self.d.send(stanza::error_reply(el, &e)),
        }
    }

    /// An IQ to the service itself: discovery (XEP-0045 §6.1, §6.3) and ping.
    async fn service_iq(&mut self, from: &FullJid, el: &Element) {
        if !matches!(el.attr("type"), Some("get" | "set")) {
            return;
        }
        let reply = match crate::services::payload_key(el) {
            (name, n) if name == "query" && n == ns::DISCO_INFO => {
                let q = Element::builder("query", ns::DISCO_INFO)
                    .append(
                        Element::builder("identity", ns::DISCO_INFO)
                            .attr(stanza::name("category"), "conference")
                            .attr(stanza::name("type"), "text")
                            .attr(stanza::name("name"), "Chatrooms")
                            .build(),
                    )
                    .append(feature(NS_MUC))
                    .append(feature(ns::DISCO_INFO))
                    .append(feature(ns::DISCO_ITEMS))
                    .append(feature(ns::PING))
                    .build();
                Ok(Some(q))
            }
            (name, n) if name == "query" && n == ns::DISCO_ITEMS => {
                Ok(Some(self.room_list().await))
            }
            (name, n) if name == "ping" && n == ns::PING => Ok(None),
            _ => Err(StanzaError::new(Condition::ServiceUnavailable)),
        };
        let reply = match reply {
            Ok(payload) => {
                let mut r = stanza::iq_result(el, Some(&self.service));
                stanza::set_attr(&mut r, "to", from.as_str());
                if let Some(p) = payload {
                    r.append_child(p);
                }
                r
            }
            Err(e) => stanza::error_reply(el, &e),
        };
        self.d.send(reply);
    }

    fn is_loaded(&self, jid: &str) -> bool {
        BareJid::new(jid).is_ok_and(|j| self.rooms.contains_key(&j))
    }

    /// Public rooms, loaded or stored (XEP-0045 §6.3); on a cluster node, those of every
    /// node, from the store.
    async fn room_list(&mut self) -> Element {
        if self.shared.is_some() {
            let suffix = format!("@{}", self.service);
            match self.d.store().muc_rooms().await {
                Ok(rooms) => {
                    self.stored = rooms
                        .into_iter()
                        .filter(|r| r.jid.ends_with(&suffix) && !self.is_loaded(&r.jid))
                        .map(|r| (r.jid.clone(), r))
                        .collect();
                }
                Err(e) => warn!(error = %e, "cannot read rooms"),
            }
        }
        let mut q = Element::builder("query", ns::DISCO_ITEMS).build();
        let mut listed: Vec<(String, String)> = self
            .rooms
            .values()
            .filter(|r| r.config().public)
            .map(|r| (r.jid().to_string(), r.display_name()))
            .collect();
        for (jid, stored) in &self.stored {
            let config = RoomConfig::from_pairs(&stored.config);
            if config.public {
                let name = if config.name.is_empty() {
                    jid.split('@').next().unwrap_or_default().to_owned()
                } else {
                    config.name
                };
                listed.push((jid.clone(), name));
            }
        }
        listed.sort();
        for (jid, name) in listed {
            q.append_child(
                Element::builder("item", ns::DISCO_ITEMS)
                    .attr(stanza::name("jid"), jid)
                    .attr(stanza::name("name"), name)
                    .build(),
            );
        }
        q
    }
}

fn feature(var: &str) -> Element {
    Element::builder("feature", ns::DISCO_INFO)
        .attr(stanza::name("var"), var)
        .build()
}

fn settle(done: Option<Done>, outcome: Result<i64, StoreError>) {
    if let Some(done) = done {
        let _ = done.send(outcome);
    }
}
