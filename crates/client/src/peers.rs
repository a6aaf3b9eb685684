//! The session's side of direct links (`crate::p2p`): whose device keys we know and
//! trust, offering and answering candidates, which messages go over a link, and the
//! fallback to the servers the moment a link breaks.
//!
//! A message goes over a link when the contact's only available resource (as far as
//! presence says) is the linked device, so a contact reading on two devices gets it on
//! both through the servers. A message sent over a link stays ours until the peer's
//! receipt comes back over it; when the link breaks first, it goes again through the
//! servers with the same id, and the peer, which recognises the id, shows it once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use outpost_proto::minidom::Element;
use outpost_proto::xml::escape;
use tokio::sync::mpsc;

use crate::event::{DeliveryState, Event, Path};
use crate::ns;
use crate::p2p::lan::{LanPresence, Neighbour};
use crate::p2p::link::{self, Dial, LinkEvent, LinkId};
use crate::p2p::{Identity, JINGLE, NS, P2pConfig, PUBSUB, Tls};
use crate::session::Session;
use crate::state::Unacked;
use crate::stream::{Stream, StreamError};
use crate::trust::Pins;

/// An offer not answered in this time is forgotten.
const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most offers under way at once: more from contacts are ignored until some end.
const MAX_OFFERS: usize = 64;

/// A contact's device: (bare JID, device id).
type Device = (String, String);

pub(crate) struct Peers {
    pub(crate) tls: Tls,
    pub(crate) identity: Identity,
    pins: Pins,
    pins_path: String,
    /// The port peers dial, once something was offered.
    port: Option<u16>,
    /// Contacts' device keys, published through their server and matching our pins.
    keys: HashMap<Device, String>,
    /// Devices whose key is not the pinned one.
    refused: HashSet<Device>,
    /// Key fetches under way, by iq id.
    fetching: HashMap<String, Device>,
    /// The device each of a contact's resources said it is.
    devices: HashMap<String, String>,
    /// Jingle sessions being set up, by sid.
    offers: HashMap<String, Offer>,
    links: BTreeMap<LinkId, Link>,
    next_id: LinkId,
    /// Our presence on the LAN while no server is reachable.
    lan: Option<LanPresence>,
    /// Copies of what was said over links while no server was reachable, for the
    /// archive once one is.
    to_archive: Vec<String>,
}

struct Offer {
    full: String,
    device: Device,
    /// We offered (and wait for the peer to dial); otherwise the peer's candidates,
    /// dialed once its key is known.
    ours: bool,
    candidates: Vec<(String, u16)>,
    since: Instant,
}

struct Link {
    device: Device,
    full: String,
    out: mpsc::Sender<String>,
    /// Messages sent over the link without a receipt yet.
    unacked: Vec<Direct>,
}

struct Direct {
    id: String,
    xml: String,
    /// When it was sent, if no server was reachable then (RFC 3339).
    serverless: Option<String>,
}

impl Peers {
    pub(crate) fn new(config: &P2pConfig) -> Result<Peers, crate::ConfigError> {
        let tls = Tls::new(&config.identity).map_err(crate::ConfigError::P2p)?;
        Ok(Peers {
            tls,
            identity: config.identity.clone(),
            pins: Pins::load(config.pins.clone())?,
            pins_path: config.pins.display().to_string(),
            port: None,
            keys: HashMap::new(),
            refused: HashSet::new(),
            fetching: HashMap::new(),
            devices: HashMap::new(),
            offers: HashMap::new(),
            links: BTreeMap::new(),
            next_id: 0,
            lan: None,
            to_archive: Vec::new(),
        })
    }

    /// The link a message to `to` goes over, if any: one with the contact's only
    /// available resource (or with a contact whose presence we do not know now).
    fn link_for(&self, to: &str, online: Option<&HashSet<String>>) -> Option<LinkId> {
        let bare = crate::bare(to);
        self.links.iter().find_map(|(id, link)| {
            let resource = link.full.get(bare.len()..).unwrap_or_default();
            let only = online.is_none_or(|o| o.iter().all(|r| r == resource));
            (link.device.0 == bare && only).then_some(*id)
        })
    }

    fn linked(&self, device: &Device) -> bool {
        self.links.values().any(|l| l.device == *device)
    }

    /// The full JID of the contact's device we have a link with.
    pub(crate) fn linked_full(&self, bare: &str) -> Option<String> {
        let link = self.links.values().find(|l| l.device.0 == bare)?;
        Some(link.full.clone()).filter(|f| f.contains('/'))
    }

    /// The key a contact's device must show: as fetched, or as pinned before.
    pub(crate) fn key_of(&self, device: &Device) -> Option<String> {
        self.keys.get(device).cloned().or_else(|| {
            let pinned = self.pins.get(&format!("{}#{}", device.0, device.1))?;
            Some(pinned.to_owned()).filter(|_| !self.refused.contains(device))
        })
    }
}

impl Session {
    /// Our available presence, saying which device this is when links are on.
    /// Without links, the element still says this is Outpost's client (which takes
    /// Outpost's file offers), with no device to link with.
    pub(crate) fn presence_stanza(&self) -> String {
        match &self.peers {
            Some(p) => format!(
                "<presence><device xmlns='{NS}' id='{}'/></presence>",
                escape(p.identity.device())
            ),
            None => format!("<presence><device xmlns='{NS}'/></presence>"),
        }
    }

    /// Publishes this device's key for contacts (before our presence, which makes them
    /// fetch it).
    pub(crate) async fn publish_key(&mut self, stream: &mut Stream) -> Result<(), StreamError> {
        let Some(p) = &self.peers else {
            return Ok(());
        };
        let xml = format!(
            "<iq type='set' id='p2p-publish'><pubsub xmlns='{PUBSUB}'><publish node='{NS}'>\
             <item id='{device}'><key xmlns='{NS}' fingerprint='{fingerprint}'/></item>\
             </publish><publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#publish-options</value>\
             </field><field var='pubsub#access_model'><value>presence</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x></publish-options>\
             </pubsub></iq>",
            device = escape(p.identity.device()),
            fingerprint = p.identity.fingerprint(),
        );
        self.send_stanza(stream, xml, None).await
    }

    /// A contact's resource came or went: learn its device's key, and offer a link if
    /// it falls to us.
    pub(crate) async fn peer_presence(
        &mut self,
        stream: &mut Stream,
        el: &Element,
        full: &str,
        available: bool,
    ) -> Result<(), StreamError> {
        // Only contacts: a stranger's directed presence must not get our addresses.
        let contact = self.people.roster.contains_key(crate::bare(full));
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        let device = el
            .get_child("device", NS)
            .and_then(|d| d.attr("id"))
            .filter(|_| available && contact);
        let Some(device) = device else {
            p.devices.remove(full);
            return Ok(());
        };
        p.devices.insert(full.to_owned(), device.to_owned());
        let device = (crate::bare(full).to_owned(), device.to_owned());
        // A linked device that logged in again elsewhere: the link goes on.
        if let Some(link) = p.links.values_mut().find(|l| l.device == device) {
            link.full = full.to_owned();
            return Ok(());
        }
        // Its key is fetched again each time: what it publishes now is what is checked.
        self.fetch_key(stream, device).await
    }

    async fn fetch_key(&mut self, stream: &mut Stream, device: Device) -> Result<(), StreamError> {
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        if p.refused.contains(&device) || p.fetching.values().any(|d| *d == device) {
            return Ok(());
        }
        let id = format!("key-{}", crate::random_id(10));
        let xml = format!(
            "<iq type='get' to='{}' id='{id}'><pubsub xmlns='{PUBSUB}'><items node='{NS}'>\
             <item id='{}'/></items></pubsub></iq>",
            escape(&device.0),
            escape(&device.1)
        );
        p.fetching.insert(id, device);
        self.send_stanza(stream, xml, None).await
    }

    /// The answer to a key fetch; `false` when `id` is not one.
    pub(crate) async fn key_answer(
        &mut self,
        stream: &mut Stream,
        id: &str,
        el: &Element,
    ) -> Result<bool, StreamError> {
        let Some(device) = self
            .peers
            .as_deref_mut()
            .and_then(|p| p.fetching.remove(id))
        else {
            return Ok(false);
        };
        let fingerprint = el
            .get_child("pubsub", PUBSUB)
            .and_then(|ps| ps.get_child("items", PUBSUB))
            .and_then(|items| {
                items
                    .children()
                    .find(|i| i.is("item", PUBSUB) && i.attr("id") == Some(device.1.as_str()))
            })
            .and_then(|item| item.get_child("key", NS))
            .and_then(|key| key.attr("fingerprint"))
            .map(str::to_ascii_lowercase);
        let Some(fingerprint) = fingerprint.filter(|f| f.len() == 64) else {
            return Ok(true);
        };
        if !self.trust_key(&device, &fingerprint).await {
            return Ok(true);
        }
        self.key_known(stream, device).await?;
        Ok(true)
    }

    /// A key fetch failed (the contact has no links, or does not share them with us).
    pub(crate) fn key_refused(&mut self, id: &str) -> bool {
        self.peers
            .as_deref_mut()
            .is_some_and(|p| p.fetching.remove(id).is_some())
    }

    /// Checks a device's published key against the pin (pinning it the first time).
    async fn trust_key(&mut self, device: &Device, fingerprint: &str) -> bool {
        let Some(p) = self.peers.as_deref_mut() else {
            return false;
        };
        let key = format!("{}#{}", device.0, device.1);
        let text = match p.pins.get(&key) {
            Some(pinned) if pinned == fingerprint => None,
            Some(pinned) => Some(format!(
                "refusing a direct link with {} (device {}): its key is not the one pinned \
                 (pinned {pinned}, now {fingerprint}); messages to them go through the servers. \
                 If they reinstalled, remove the line {key} from {}",
                device.0, device.1, p.pins_path
            )),
            None => match p.pins.remember(&key, fingerprint) {
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(text) = text {
            p.refused.insert(device.clone());
            p.keys.remove(device);
            p.offers.retain(|_, o| o.device != *device);
            self.emit(Event::Error { text }).await;
            return false;
        }
        p.keys.insert(device.clone(), fingerprint.to_owned());
        true
    }

    /// A device's key is known: dial its offer if it made one, or offer ourselves.
    async fn key_known(&mut self, stream: &mut Stream, device: Device) -> Result<(), StreamError> {
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        let theirs = p
            .offers
            .iter()
            .find(|(_, o)| !o.ours && o.device == device)
            .map(|(sid, _)| sid.clone());
        if let Some(sid) = theirs {
            self.dial(&sid);
            return Ok(());
        }
        let full = p
            .devices
            .iter()
            .find(|(full, d)| crate::bare(full) == device.0 && **d == device.1)
            .map(|(full, _)| full.clone());
        match full {
            Some(full) => self.offer(stream, &full, device).await,
            None => Ok(()),
        }
    }

    /// Offers `full` a link, if it falls to us (the smaller full JID offers) and none is
    /// there or under way.
    async fn offer(
        &mut self,
        stream: &mut Stream,
        full: &str,
        device: Device,
    ) -> Result<(), StreamError> {
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        p.offers.retain(|_, o| o.since.elapsed() < OFFER_TIMEOUT);
        let busy = p.linked(&device) || p.offers.values().any(|o| o.device == device);
        if self.jid.as_str() >= full || busy || p.refused.contains(&device) {
            return Ok(());
        }
        let Some(port) = self.listening().await else {
            return Ok(());
        };
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        let sid = crate::random_id(16);
        let candidates = crate::p2p::candidates_xml(&crate::p2p::candidates(stream.local, port));
        let xml = format!(
            "<iq type='set' to='{to}' id='{sid}'><jingle xmlns='{JINGLE}' \
             action='session-initiate' initiator='{me}' sid='{sid}'><content \
             creator='initiator' name='chat'><description xmlns='{NS}' device='{device}'/>\
             <transport xmlns='{NS}'>{candidates}</transport></content></jingle></iq>",
            to = escape(full),
            me = escape(&self.jid),
            device = escape(p.identity.device()),
        );
        p.offers.insert(
            sid,
            Offer {
                full: full.to_owned(),
                device,
                ours: true,
                candidates: Vec::new(),
                since: Instant::now(),
            },
        );
        self.send_stanza(stream, xml, None).await
    }

    /// The port peers dial, listening on it the first time.
    pub(crate) async fn listening(&mut self) -> Option<u16> {
        let p = self.peers.as_deref_mut()?;
        if p.port.is_none() {
            match link::listen(p.tls.clone(), self.link_tx.clone()).await {
                Ok(port) => p.port = Some(port),
                Err(e) => tracing::warn!(error = %e, "cannot listen for direct links"),
            }
        }
        p.port
    }

    /// A Jingle request from a contact's device; `false` when `el` is none (or links
    /// are off, and it is refused like any unknown request).
    pub(crate) async fn on_jingle(
        &mut self,
        stream: &mut Stream,
        el: &Element,
    ) -> Result<bool, StreamError> {
        let (Some(jingle), Some(_)) = (el.get_child("jingle", JINGLE), self.peers.as_ref()) else {
            return Ok(false);
        };
        let full = el.attr("from").unwrap_or_default().to_owned();
        let sid = jingle.attr("sid").unwrap_or_default().to_owned();
        let contact = self.people.roster.contains_key(crate::bare(&full));
        match jingle.attr("action") {
            Some("session-initiate") if contact && !sid.is_empty() => {
                self.answer(stream, el, None).await?;
                self.their_offer(stream, &full, sid, jingle).await?;
            }
            Some("session-terminate") => {
                if let Some(p) = self.peers.as_deref_mut() {
                    p.offers.retain(|s, o| *s != sid || o.full != full);
                }
                self.answer(stream, el, None).await?;
            }
            _ => {
                let error = "<error type='cancel'><not-acceptable \
                             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";
                self.answer(stream, el, Some(error)).await?;
            }
        }
        Ok(true)
    }

    async fn their_offer(
        &mut self,
        stream: &mut Stream,
        full: &str,
        sid: String,
        jingle: &Element,
    ) -> Result<(), StreamError> {
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        let content = jingle.get_child("content", JINGLE);
        let device = content
            .and_then(|c| c.get_child("description", NS))
            .and_then(|d| d.attr("device"))
            .unwrap_or_default();
        let mut candidates: Vec<(u32, String, u16)> = content
            .and_then(|c| c.get_child("transport", NS))
            .map(|t| {
                t.children()
                    .filter(|c| c.is("candidate", NS))
                    .filter_map(|c| {
                        let priority = c.attr("priority").and_then(|p| p.parse().ok());
                        let port = c.attr("port").and_then(|p| p.parse().ok())?;
                        Some((priority.unwrap_or(0), c.attr("host")?.to_owned(), port))
                    })
                    .take(16)
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        let device = (crate::bare(full).to_owned(), device.to_owned());
        p.offers.retain(|_, o| o.since.elapsed() < OFFER_TIMEOUT);
        let full_up = p.offers.len() >= MAX_OFFERS;
        if device.1.is_empty() || full_up || p.refused.contains(&device) || p.linked(&device) {
            return Ok(());
        }
        p.offers.insert(
            sid.clone(),
            Offer {
                full: full.to_owned(),
                device: device.clone(),
                ours: false,
                candidates: candidates.into_iter().map(|(_, h, p)| (h, p)).collect(),
                since: Instant::now(),
            },
        );
        match p.keys.contains_key(&device) {
            true => {
                self.dial(&sid);
                Ok(())
            }
            false => self.fetch_key(stream, device).await,
        }
    }

    /// Dials the candidates of the peer's offer `sid` in the background.
    fn dial(&mut self, sid: &str) {
        let Some(p) = self.peers.as_deref_mut() else {
            return;
        };
        let Some(offer) = p.offers.get(sid) else {
            return;
        };
        let Some(pinned) = p.keys.get(&offer.device) else {
            return;
        };
        let dial = Dial {
            sid: sid.to_owned(),
            peer: offer.full.clone(),
            candidates: offer.candidates.clone(),
            pinned: pinned.clone(),
            jid: self.config.jid.clone(),
            device: p.identity.device().to_owned(),
        };
        tokio::spawn(link::dial(p.tls.clone(), dial, self.link_tx.clone()));
    }

    /// What a link task reported. `stream` is the server's, when one is there.
    pub(crate) async fn on_link_event(
        &mut self,
        stream: Option<&mut Stream>,
        event: LinkEvent,
    ) -> Result<(), StreamError> {
        match event {
            LinkEvent::Accepted {
                sid,
                jid,
                device,
                fingerprint,
                stream: link,
            } => self.accepted(sid, jid, &device, &fingerprint, link).await,
            LinkEvent::Neighbour(neighbour) => self.neighbour(neighbour),
            LinkEvent::FileChannel {
                sid,
                jid,
                device,
                offset,
                fingerprint,
                stream: link,
            } => {
                self.file_channel(&sid, (&jid, &device), offset, &fingerprint, link)
                    .await;
            }
            LinkEvent::File(event) => return self.on_file_event(stream, event).await,
            LinkEvent::Dialed { sid, stream: link } => {
                let offer = self
                    .peers
                    .as_deref_mut()
                    .and_then(|p| p.offers.remove(&sid));
                if let Some(offer) = offer {
                    self.link_up(offer, link).await;
                }
            }
            LinkEvent::DialFailed { sid, reason, shown } => {
                return self.dial_failed(stream, &sid, &reason, shown).await;
            }
            LinkEvent::Element { id, el } => self.over_link(id, &el).await,
            LinkEvent::Closed { id, reason } => return self.link_down(stream, id, &reason).await,
        }
        Ok(())
    }

    /// A peer dialed in for one of our offers, or, found on the LAN, for none: take it
    /// if it shows the key we pinned for its device.
    async fn accepted(
        &mut self,
        sid: String,
        jid: Option<String>,
        device: &str,
        fingerprint: &str,
        mut link: Box<Stream>,
    ) {
        let Some(p) = self.peers.as_deref_mut() else {
            return;
        };
        if !p.offers.contains_key(&sid)
            && let Some(jid) = jid
            && p.pins.get(&format!("{jid}#{device}")) == Some(fingerprint)
        {
            let device = (jid.clone(), device.to_owned());
            p.keys.insert(device.clone(), fingerprint.to_owned());
            let offer = Offer {
                full: jid,
                device,
                ours: true,
                candidates: Vec::new(),
                since: Instant::now(),
            };
            p.offers.insert(sid.clone(), offer);
        }
        let Some(offer) = p
            .offers
            .get(&sid)
            .filter(|o| o.ours && o.device.1 == device)
        else {
            return;
        };
        let pinned = p.keys.get(&offer.device).cloned().unwrap_or_default();
        if pinned != fingerprint {
            let text = format!(
                "refused a direct link from {} (device {device}): it showed a key other than the \
                 one it published (published {pinned}, shown {fingerprint})",
                offer.device.0
            );
            self.emit(Event::Error { text }).await;
            return;
        }
        let Some(offer) = p.offers.remove(&sid) else {
            return;
        };
        if link.write(&link::confirmation(&sid)).await.is_ok() {
            self.link_up(offer, link).await;
        }
    }

    async fn dial_failed(
        &mut self,
        stream: Option<&mut Stream>,
        sid: &str,
        reason: &str,
        shown: Option<String>,
    ) -> Result<(), StreamError> {
        let Some(offer) = self.peers.as_deref_mut().and_then(|p| p.offers.remove(sid)) else {
            return Ok(());
        };
        tracing::info!(peer = %offer.full, %reason, "no direct link");
        if let Some(shown) = shown {
            let text = format!(
                "refused a direct link with {} (device {}): it showed a key other than the one \
                 it published (shown {shown})",
                offer.device.0, offer.device.1
            );
            self.emit(Event::Error { text }).await;
        }
        let Some(stream) = stream else {
            return Ok(());
        };
        let xml = format!(
            "<iq type='set' to='{}' id='{}'><jingle xmlns='{JINGLE}' action='session-terminate' \
             sid='{}'><reason><connectivity-error/></reason></jingle></iq>",
            escape(&offer.full),
            crate::random_id(10),
            escape(sid)
        );
        self.send_stanza(stream, xml, None).await
    }

    async fn link_up(&mut self, offer: Offer, stream: Box<Stream>) {
        let Some(p) = self.peers.as_deref_mut() else {
            return;
        };
        let id = p.next_id;
        p.next_id += 1;
        let (out, rx) = mpsc::channel(256);
        tokio::spawn(link::run(id, stream, rx, self.link_tx.clone()));
        let with = offer.device.0.clone();
        p.links.insert(
            id,
            Link {
                device: offer.device,
                full: offer.full,
                out,
                unacked: Vec::new(),
            },
        );
        tracing::info!(%with, "direct link up");
        self.people.path_told.insert(with.clone());
        self.emit(Event::Path {
            with,
            path: Path::Direct,
        })
        .await;
    }

    /// A link broke: what it had not delivered goes through the servers.
    async fn link_down(
        &mut self,
        mut stream: Option<&mut Stream>,
        id: LinkId,
        reason: &str,
    ) -> Result<(), StreamError> {
        let Some(link) = self.peers.as_deref_mut().and_then(|p| p.links.remove(&id)) else {
            return Ok(());
        };
        let with = link.device.0.clone();
        tracing::info!(%with, %reason, "direct link down");
        self.emit(Event::Path {
            with,
            path: Path::Server,
        })
        .await;
        for Direct { id, xml, .. } in link.unacked {
            match stream.as_deref_mut() {
                Some(stream) => self.send_message(stream, xml, id).await?,
                None => self.pending.push(Unacked {
                    xml,
                    message: Some(id),
                }),
            }
        }
        Ok(())
    }

    /// Sends a stanza to `to` over a link if one carries the conversation; `false` when
    /// none does (or it just broke, and the servers must carry it). `message` is the id
    /// of a chat message, kept until its receipt.
    pub(crate) fn send_direct(&mut self, to: &str, xml: &str, message: Option<&str>) -> bool {
        // With no server, any link to the contact will do.
        let online = self
            .people
            .online
            .get(crate::bare(to))
            .filter(|_| self.online);
        let serverless = (!self.online).then(crate::incoming::now).flatten();
        let Some(p) = self.peers.as_deref_mut() else {
            return false;
        };
        let Some(id) = p.link_for(to, online) else {
            return false;
        };
        let Some(link) = p.links.get_mut(&id) else {
            return false;
        };
        if link.out.try_send(xml.to_owned()).is_err() {
            return false;
        }
        if let Some(message) = message {
            link.unacked.push(Direct {
                id: message.to_owned(),
                xml: xml.to_owned(),
                serverless,
            });
        }
        true
    }

    /// A stanza over a link: a message (with receipts and markers), shown as direct.
    async fn over_link(&mut self, id: LinkId, el: &Element) {
        let Some(link) = self.peers.as_deref_mut().and_then(|p| p.links.get_mut(&id)) else {
            return;
        };
        if !el.is("message", ns::CLIENT) {
            return;
        }
        let from = link.device.0.clone();
        if let Some(receipt) = el
            .get_child("received", ns::RECEIPTS)
            .and_then(|r| r.attr("id"))
        {
            let at = link.unacked.iter().position(|d| d.id == receipt);
            let delivered = at.map(|at| link.unacked.remove(at));
            if let Some(Direct {
                xml,
                serverless: Some(stamp),
                ..
            }) = delivered
                && let Some(p) = self.peers.as_deref_mut()
            {
                p.to_archive.push(archive_copy(&xml, &stamp));
            }
            let id = receipt.to_owned();
            let state = DeliveryState::Delivered;
            self.emit(Event::Delivery { id, state }).await;
        }
        if let Some(marker) = el
            .get_child("displayed", ns::MARKERS)
            .and_then(|r| r.attr("id"))
        {
            let id = marker.to_owned();
            let state = DeliveryState::Read;
            self.emit(Event::Delivery { id, state }).await;
        }
        let Some(body) = el.get_child("body", ns::CLIENT).map(Element::text) else {
            return;
        };
        let message_id = el.attr("id").unwrap_or_default().to_owned();
        if el.has_child("request", ns::RECEIPTS) && !message_id.is_empty() {
            let receipt = receipt(&from, &message_id);
            if let Some(link) = self.peers.as_deref_mut().and_then(|p| p.links.get_mut(&id)) {
                let _ = link.out.try_send(receipt);
            }
        }
        if !self.first_sight(&from, Some(&message_id), None, None) {
            return;
        }
        self.emit(Event::Message {
            from,
            body,
            id: message_id,
            path: Path::Direct,
            stamp: None,
        })
        .await;
    }

    /// A contact's device on the LAN while we have no server: dial it with its pinned key
    /// (the smaller account and device dials, so the two do not both).
    fn neighbour(&mut self, n: Neighbour) {
        let Some(p) = self.peers.as_deref_mut() else {
            return;
        };
        let device = (n.jid, n.device);
        let Some(pinned) = p.pins.get(&format!("{}#{}", device.0, device.1)) else {
            return;
        };
        let ours = (self.config.jid.as_str(), p.identity.device());
        let busy = p.linked(&device) || p.offers.values().any(|o| o.device == device);
        if self.online || busy || ours >= (device.0.as_str(), device.1.as_str()) {
            return;
        }
        p.keys.insert(device.clone(), pinned.to_owned());
        let sid = format!("lan-{}", crate::random_id(12));
        let offer = Offer {
            full: device.0.clone(),
            device,
            ours: false,
            candidates: n.addresses,
            since: Instant::now(),
        };
        p.offers.insert(sid.clone(), offer);
        self.dial(&sid);
    }

    /// No server answers: announce ourselves on the LAN, and look for contacts there.
    pub(crate) async fn serverless_start(&mut self) {
        if self.peers.as_ref().is_none_or(|p| p.lan.is_some()) {
            return;
        }
        let Some(port) = self.listening().await else {
            return;
        };
        let Some(p) = self.peers.as_deref_mut() else {
            return;
        };
        let device = p.identity.device().to_owned();
        match LanPresence::start(&self.config.jid, &device, port, self.link_tx.clone()) {
            Ok(lan) => {
                tracing::info!("no server: announced on the LAN for direct links");
                p.lan = Some(lan);
            }
            Err(e) => tracing::warn!(error = %e, "cannot announce on the LAN"),
        }
    }

    /// A server is back: stop announcing on the LAN (links stay), and hand it what was
    /// said over links meanwhile, for the archive.
    pub(crate) async fn serverless_end(&mut self, stream: &mut Stream) -> Result<(), StreamError> {
        let Some(p) = self.peers.as_deref_mut() else {
            return Ok(());
        };
        p.lan = None;
        for xml in std::mem::take(&mut p.to_archive) {
            self.send_stanza(stream, xml, None).await?;
        }
        Ok(())
    }

    /// A new session: contacts' resources will say again which devices they are.
    pub(crate) fn forget_devices(&mut self) {
        if let Some(p) = self.peers.as_deref_mut() {
            p.devices.clear();
            p.fetching.clear();
        }
    }
}

/// A message said over a link with no server, sent through one later so it is in the
/// archives: the same id (so the peer, which has it, does not show it again), when it
/// was said (XEP-0203), and a mark saying it is a copy.
fn archive_copy(xml: &str, stamp: &str) -> String {
    let extra = format!(
        "<delay xmlns='urn:xmpp:delay' stamp='{}'/><copy xmlns='{NS}'/></message>",
        escape(stamp)
    );
    // Nothing to answer: the peer had it, and said so.
    let xml = xml
        .replace("<request xmlns='urn:xmpp:receipts'/>", "")
        .replace("<markable xmlns='urn:xmpp:chat-markers:0'/>", "");
    match xml.strip_suffix("</message>") {
        Some(head) => format!("{head}{extra}"),
        None => xml,
    }
}

/// A receipt (XEP-0184) for message `id` from `to`.
pub(crate) fn receipt(to: &str, id: &str) -> String {
    format!(
        "<message to='{}' id='{}'><received xmlns='urn:xmpp:receipts' id='{}'/></message>",
        escape(to),
        crate::random_id(12),
        escape(id)
    )
}
