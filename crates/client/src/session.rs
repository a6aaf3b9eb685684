//! The client's task: connect to the first server that answers, resume or log in afresh,
//! serve the connection, and when it breaks, go again, the next server if need be.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use outpost_proto::xml::escape;
use tokio::sync::mpsc;

use crate::event::{Command, DeliveryState, Event, HistoryItem};
use crate::p2p::link::LinkEvent;
use crate::peers::Peers;
use crate::server::Server;
use crate::state::{Acks, People, Shown, SmSession, Unacked};
use crate::stream::{Stream, StreamError};
use crate::trust::Verifier;
use crate::{Config, ConfigError};

/// How often the connection is looked after: acknowledgements asked for, home probed.
const TICK: Duration = Duration::from_secs(5);
/// Silence after which the server is asked whether it is there.
const QUIET: Duration = Duration::from_secs(10);
/// Silence after which the connection counts as lost.
const DEAD: Duration = Duration::from_secs(20);
/// How long the LAN is listened to for a server's announcement.
const LAN_WAIT: Duration = Duration::from_millis(1500);
/// The longest wait between two rounds over every server.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest wait between two attempts to return home when home answers but the
/// return fails (an account not there yet, a login refused).
const MAX_HOME_WAIT: Duration = Duration::from_secs(300);

/// How one connection ended.
enum End {
    Quit,
    /// Home answers again: leave this server for it.
    GoHome,
    Lost(StreamError),
}

pub(crate) struct Session {
    pub(crate) config: Config,
    pub(crate) user: String,
    pub(crate) domain: String,
    pub(crate) verifier: Verifier,
    events: mpsc::Sender<Event>,
    pub(crate) acks: Acks,
    pub(crate) people: People,
    pub(crate) shown: Shown,
    /// Stanzas asked for while no server was there, sent at the next login.
    pub(crate) pending: Vec<Unacked>,
    /// The full JID of this connection.
    pub(crate) jid: String,
    /// The index in `servers` of the server we are on (`usize::MAX`: one a server
    /// sent us to).
    current: usize,
    /// The server we are on.
    at: Option<Server>,
    /// Whether a server session is up now.
    pub(crate) online: bool,
    /// When anything last came from the server.
    last_heard: Instant,
    /// While away from home: how long between attempts to return, and the next one.
    home_wait: Duration,
    home_next: Instant,
    /// Without stream management: the ping ids that stand for messages.
    pub(crate) pings: Vec<(String, String)>,
    /// An archive query under way: its id.
    pub(crate) catching_up: Option<String>,
    /// When the newest message shown was sent (RFC 3339), where catching up starts.
    pub(crate) newest: Option<String>,
    /// Whether this client had a server session before the current one.
    pub(crate) logged_in_before: bool,
    /// History queries under way: the conversation, and the page so far.
    pub(crate) histories: HashMap<String, (String, Vec<HistoryItem>)>,
    /// The rooms we are in (or entering), with our nick in each.
    pub(crate) rooms: BTreeMap<String, String>,
    /// Our messages known delivered or read.
    progressed: Shown,
    /// Rooms that answered item-not-found, with the attempts so far.
    pub(crate) room_retries: BTreeMap<String, u8>,
    /// The servers to try, in order: the configured ones, or what DNS said last.
    servers: Vec<Server>,
    /// For DNS SRV lookups, when no servers are configured.
    resolver: Option<hickory_resolver::TokioResolver>,
    /// Direct links with contacts' devices, when they are on.
    pub(crate) peers: Option<Box<Peers>>,
    /// Files on their way.
    pub(crate) files: crate::files::Files,
    /// What the link tasks report (the sender is kept, so the channel never ends).
    pub(crate) link_tx: mpsc::Sender<LinkEvent>,
    link_rx: mpsc::Receiver<LinkEvent>,
}

impl Session {
    pub(crate) fn new(
        mut config: Config,
        events: mpsc::Sender<Event>,
    ) -> Result<Session, ConfigError> {
        let (user, domain) = config
            .jid
            .split_once('@')
            .filter(|(u, d)| !u.is_empty() && !d.is_empty() && !d.contains('/'))
            .map(|(u, d)| (u.to_owned(), d.to_lowercase()))
            .ok_or_else(|| ConfigError::Jid(config.jid.clone()))?;
        // Local parts and domains compare without case (RFC 7622 §3.2, §3.3).
        config.jid = format!("{}@{domain}", user.to_lowercase());
        let verifier = Verifier::new(&config.trust)?;
        // Looked up in DNS at each round when no servers are given.
        let servers = config.servers.clone();
        let resolver = match servers.is_empty() {
            true => Some(crate::srv::resolver(config.dns).map_err(ConfigError::Dns)?),
            false => None,
        };
        let peers = match &config.p2p {
            Some(p2p) => Some(Box::new(Peers::new(p2p)?)),
            None => None,
        };
        let (link_tx, link_rx) = mpsc::channel(256);
        Ok(Session {
            files: crate::files::Files::new(config.downloads.clone()),
            peers,
            link_tx,
            link_rx,
            servers,
            resolver,
            config,
            user,
            domain,
            verifier,
            events,
            acks: Acks::default(),
            people: People::default(),
            shown: Shown::default(),
            pending: Vec::new(),
            jid: String::new(),
            current: 0,
            at: None,
            online: false,
            last_heard: Instant::now(),
            home_wait: TICK,
            home_next: Instant::now(),
            pings: Vec::new(),
            catching_up: None,
            newest: None,
            logged_in_before: false,
            histories: HashMap::new(),
            rooms: BTreeMap::new(),
            progressed: Shown::default(),
            room_retries: BTreeMap::new(),
        })
    }

    /// Hands an event to the user. A message's state only moves forward: its receipt
    /// can come before the server's acknowledgement, and `queued` is then old news.
    pub(crate) async fn emit(&mut self, event: Event) {
        if let Event::Delivery { id, state } = &event {
            if *state == DeliveryState::Queued && self.progressed.contains(id) {
                return;
            }
            let later = |s: DeliveryState| self.progressed.contains(&format!("{s:?}:{id}"));
            if *state == DeliveryState::Relayed
                && (later(DeliveryState::Delivered) || later(DeliveryState::Read))
            {
                return;
            }
            // Each later state once (a receipt may come twice: over a link, then again
            // for the copy the servers carried).
            if *state > DeliveryState::Queued {
                if !self.progressed.first_time(&[format!("{state:?}:{id}")]) {
                    return;
                }
                self.progressed.first_time(std::slice::from_ref(id));
            }
        }
        let _ = self.events.send(event).await;
    }

    /// Runs until the user quits.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut redirect: Option<Server> = None;
        // Whether the last connection was to another server than home (set as each ends).
        let mut returning = false;
        // Whether the last connection ended to go home.
        let mut went_home = false;
        loop {
            let Some((mut stream, resumed)) =
                self.connect_any(&mut commands, redirect.take()).await
            else {
                return;
            };
            self.schedule_return(std::mem::take(&mut went_home));
            let why = match (self.current, returning) {
                (usize::MAX, _) => "redirected",
                (0, true) => "returned",
                (0, false) => "home",
                _ => "failover",
            };
            let server = self.server_name();
            self.emit(Event::Connected {
                server: server.clone(),
                jid: self.jid.clone(),
                why: why.to_owned(),
                resumed,
            })
            .await;
            match self.serve(&mut stream, &mut commands).await {
                End::Quit => return self.quit(stream).await,
                End::GoHome => {
                    stream.close().await;
                    self.acks.session = None;
                    (returning, went_home) = (true, true);
                    self.lost(&server, "moving back to the home server").await;
                }
                End::Lost(e) => {
                    returning = self.current != 0;
                    if let StreamError::Stream {
                        other_host: Some(host),
                        ..
                    } = &e
                    {
                        redirect = Server::from_see_other_host(host);
                    }
                    self.lost(&server, &e.to_string()).await;
                }
            }
        }
    }

    /// When to try home next, once connected: at the next tick at home or after a
    /// failover; a return that did not take (`went_home`, yet not home) waits longer each
    /// time.
    fn schedule_return(&mut self, went_home: bool) {
        self.home_wait = match (self.current, went_home) {
            (0, _) => TICK,
            (_, true) => (self.home_wait * 2).min(MAX_HOME_WAIT),
            (_, false) => self.home_wait,
        };
        self.home_next = Instant::now() + self.home_wait;
    }

    /// Logs out: says what was received, so the server keeps none of it for later.
    async fn quit(&mut self, mut stream: Stream) {
        if self.acks.enabled {
            let h = self.acks.received;
            let _ = stream
                .write(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"))
                .await;
        }
        stream.close().await;
    }

    /// The host of the server we are on.
    pub(crate) fn at_host(&self) -> Option<&str> {
        self.at.as_ref().map(|s| s.host.as_str())
    }

    fn server_name(&self) -> String {
        self.at
            .as_ref()
            .map_or_else(|| "none".to_owned(), Server::to_string)
    }

    /// The connection is gone. Contacts' presence stays as it was: a resumed session
    /// goes on with it, and a new one starts from nothing (see `fresh_session`).
    async fn lost(&mut self, server: &str, reason: &str) {
        self.online = false;
        self.emit(Event::Disconnected {
            server: server.to_owned(),
            reason: reason.to_owned(),
        })
        .await;
    }

    /// Tries each server in order (a redirection first) until one logs us in; between
    /// rounds, waits longer each time, taking commands meanwhile. `None` when the user
    /// quit.
    async fn connect_any(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        redirect: Option<Server>,
    ) -> Option<(Stream, bool)> {
        let mut backoff = Duration::from_millis(500);
        let mut told = std::collections::HashSet::new();
        loop {
            if let Err(text) = self.look_up_servers().await
                && told.insert(text.clone())
            {
                self.emit(Event::Error { text }).await;
            }
            let mut candidates: Vec<(usize, Server)> =
                self.servers.iter().cloned().enumerate().collect();
            // Where a server sent us goes first; if it is one of ours, as itself.
            if let Some(r) = redirect.clone() {
                match candidates.iter().position(|(_, s)| *s == r) {
                    Some(i) => {
                        let ours = candidates.remove(i);
                        candidates.insert(0, ours);
                    }
                    None => candidates.insert(0, (usize::MAX, r)),
                }
            }
            for (index, server) in candidates {
                match self.establish(index, &server).await {
                    Ok(connected) => return Some(connected),
                    Err(e) => {
                        // Each failure is told once, not at every round.
                        if told.insert(e.to_string()) {
                            self.emit(Event::Error {
                                text: e.to_string(),
                            })
                            .await;
                        }
                    }
                }
            }
            // No server: contacts on the LAN may still be reached directly.
            self.serverless_start().await;
            if !self.wait_offline(commands, backoff).await {
                return None;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// With no servers configured, the domain's SRV records, or those announced on the
    /// LAN, or the domain itself; when DNS cannot say, the last list it gave. `Err` says
    /// why it could not.
    async fn look_up_servers(&mut self) -> Result<(), String> {
        let Some(resolver) = &self.resolver else {
            return Ok(());
        };
        let found = crate::srv::servers(resolver, &self.domain).await;
        if let Ok(servers) = &found
            && !servers.is_empty()
        {
            self.servers = servers.clone();
            return Ok(());
        }
        // Nothing in DNS: the LAN, then the domain itself, then (DNS failing) the last list.
        let lan = crate::lan::find(&self.domain, LAN_WAIT).await;
        let (servers, result) = match found {
            _ if !lan.is_empty() => (lan, Ok(())),
            Ok(_) => (vec![Server::for_domain(&self.domain)], Ok(())),
            Err(e) if self.servers.is_empty() => (vec![Server::for_domain(&self.domain)], Err(e)),
            Err(e) => (std::mem::take(&mut self.servers), Err(e)),
        };
        self.servers = servers;
        result
    }

    /// Waits `delay` while no server is reachable, queueing what the user sends.
    /// `false` when the user quit.
    async fn wait_offline(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        delay: Duration,
    ) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                command = commands.recv() => match command {
                    None | Some(Command::Quit) => return false,
                    Some(command) => self.offline_command(command).await,
                },
                Some(event) = self.link_rx.recv() => {
                    // Without a server, nothing can fail here.
                    let _ = self.on_link_event(None, event).await;
                }
            }
        }
    }

    /// Logs in at one server: resumes the session held there, or binds a new one.
    async fn establish(
        &mut self,
        index: usize,
        server: &Server,
    ) -> Result<(Stream, bool), StreamError> {
        let mut stream = Stream::connect(server, &self.domain, &self.verifier).await?;
        let password = self.config.password.clone();
        stream.login(server, &self.user, &password).await?;
        if let Some(seen) = &stream.seen {
            self.verifier.remember(&server.to_string(), seen)?;
        }
        self.current = index;
        self.at = Some(server.clone());
        self.last_heard = Instant::now();
        let resumed = match self.acks.session.clone().filter(|s| s.server == index) {
            Some(sm) => self.resume(&mut stream, server, &sm).await?,
            None => false,
        };
        if !resumed {
            self.fresh_session(&mut stream, server).await?;
        }
        self.online = true;
        self.serverless_end(&mut stream).await?;
        Ok((stream, resumed))
    }

    /// Tries XEP-0198 resumption; `false` when the server no longer has the session.
    async fn resume(
        &mut self,
        stream: &mut Stream,
        server: &Server,
        sm: &SmSession,
    ) -> Result<bool, StreamError> {
        stream
            .write(&format!(
                "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='{}'/>",
                escape(&sm.id),
                self.acks.received
            ))
            .await?;
        let answer = tokio::time::timeout(crate::stream::STEP_TIMEOUT, stream.next())
            .await
            .map_err(|_| StreamError::Timeout(server.to_string()))??;
        // Both answers may say how much of ours the server had (XEP-0198 §5); what it had
        // is not sent again.
        if let Some(h) = answer.attr("h").and_then(|h| h.parse().ok()) {
            for event in self.acks.ack(h) {
                self.emit(event).await;
            }
        }
        if answer.name() != "resumed" {
            self.acks.session = None;
            return Ok(false);
        }
        self.jid = sm.jid.clone();
        self.acks.enabled = true;
        // What the server did not have goes again, in order, then what waited offline.
        let again: Vec<Unacked> = self.acks.unacked.drain(..).collect();
        let pending = std::mem::take(&mut self.pending);
        for u in again.into_iter().chain(pending) {
            self.send_stanza(stream, u.xml, u.message).await?;
        }
        Ok(true)
    }

    /// A new session: bind, stream management, carbons, roster, presence, then what was
    /// not acknowledged on the last one and what waited, then the archive since the
    /// newest message shown.
    async fn fresh_session(
        &mut self,
        stream: &mut Stream,
        server: &Server,
    ) -> Result<(), StreamError> {
        let resource = format!("{}-{}", self.config.resource, crate::random_id(4));
        self.jid = stream.bind(server, &resource).await?;
        self.acks.restart();
        self.acks.session = None;
        self.forget_devices();
        // A new session knows nobody's presence until the server sends it again, right
        // after ours below.
        for from in self.people.all_offline() {
            self.emit(Event::Presence {
                from,
                available: false,
            })
            .await;
        }
        let carried: Vec<Unacked> = self
            .acks
            .unacked
            .drain(..)
            .filter(|u| u.message.is_some())
            .chain(std::mem::take(&mut self.pending))
            .collect();
        if stream.offers_sm() {
            self.enable_sm(stream, server).await?;
        }
        self.send_stanza(
            stream,
            "<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>".to_owned(),
            None,
        )
        .await?;
        self.send_stanza(
            stream,
            "<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>".to_owned(),
            None,
        )
        .await?;
        self.publish_key(stream).await?;
        let presence = self.presence_stanza();
        self.send_stanza(stream, presence, None).await?;
        self.rejoin(stream).await?;
        for u in carried {
            self.send_stanza(stream, u.xml, u.message).await?;
        }
        // On the first login the offline store hands over what waited; what came before
        // was for an earlier run of the client (a message over a LAN link meanwhile
        // says nothing of what the servers hold).
        match std::mem::replace(&mut self.logged_in_before, true) {
            true => self.catch_up(stream, None).await,
            false => Ok(()),
        }
    }

    async fn enable_sm(&mut self, stream: &mut Stream, server: &Server) -> Result<(), StreamError> {
        stream
            .write("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await?;
        let answer = tokio::time::timeout(crate::stream::STEP_TIMEOUT, stream.next())
            .await
            .map_err(|_| StreamError::Timeout(server.to_string()))??;
        if answer.name() == "enabled" {
            self.acks.enabled = true;
            let resumable = matches!(answer.attr("resume"), Some("true" | "1"));
            self.acks.session = answer.attr("id").filter(|_| resumable).map(|id| SmSession {
                id: id.to_owned(),
                server: self.current,
                jid: self.jid.clone(),
            });
        }
        Ok(())
    }

    /// Writes a stanza, keeping it until the server acknowledges it.
    pub(crate) async fn send_stanza(
        &mut self,
        stream: &mut Stream,
        xml: String,
        message: Option<String>,
    ) -> Result<(), StreamError> {
        stream.write(&xml).await?;
        if self.acks.enabled {
            self.acks.unacked.push_back(Unacked { xml, message });
        } else if let Some(id) = message {
            // No acknowledgements: a ping's answer says the server has what came before.
            let ping = format!("q-{}", crate::random_id(12));
            stream
                .write(&format!(
                    "<iq type='get' id='{ping}'><ping xmlns='urn:xmpp:ping'/></iq>"
                ))
                .await?;
            self.pings.push((ping, id));
        }
        Ok(())
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, stream: &mut Stream, commands: &mut mpsc::Receiver<Command>) -> End {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let step = tokio::select! {
                el = stream.next() => match el {
                    Ok(el) => {
                        self.last_heard = Instant::now();
                        self.on_element(stream, el).await
                    }
                    Err(e) => Err(e),
                },
                command = commands.recv() => match command {
                    None | Some(Command::Quit) => return End::Quit,
                    Some(command) => self.on_command(stream, command).await,
                },
                Some(event) = self.link_rx.recv() => self.on_link_event(Some(stream), event).await,
                _ = tick.tick() => match self.on_tick(stream).await {
                    Ok(true) => return End::GoHome,
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = step {
                return End::Lost(e);
            }
        }
    }

    /// Keeps the connection honest, and checks whether home is back. `true`: go home.
    async fn on_tick(&mut self, stream: &mut Stream) -> Result<bool, StreamError> {
        let quiet = self.last_heard.elapsed();
        if quiet > DEAD {
            return Err(StreamError::Timeout(self.server_name()));
        }
        if quiet > QUIET || !self.acks.unacked.is_empty() {
            if self.acks.enabled {
                stream.write("<r xmlns='urn:xmpp:sm:3'/>").await?;
            } else {
                stream
                    .write("<iq type='get' id='keepalive'><ping xmlns='urn:xmpp:ping'/></iq>")
                    .await?;
            }
        }
        self.retry_rooms(stream).await?;
        if self.current == 0 || Instant::now() < self.home_next {
            return Ok(false);
        }
        let Some(home) = self.servers.first() else {
            return Ok(false);
        };
        let probe = tokio::net::TcpStream::connect((home.host.as_str(), home.port));
        Ok(matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        ))
    }

    /// A command while a server is there.
    async fn on_command(
        &mut self,
        stream: &mut Stream,
        command: Command,
    ) -> Result<(), StreamError> {
        match command {
            Command::Send { to, body, id } => {
                let id = id.unwrap_or_else(|| crate::random_id(16));
                let xml = chat_message(&to, &body, &id);
                if !self.send_direct(&to, &xml, Some(&id)) {
                    self.tell_path(&to).await;
                    self.send_message(stream, xml, id).await?;
                }
            }
            Command::Add { jid } => self.add(stream, crate::bare(&jid)).await?,
            Command::Remove { jid } => {
                let xml = format!(
                    "<iq type='set' id='{}'><query xmlns='jabber:iq:roster'><item jid='{}' \
                     subscription='remove'/></query></iq>",
                    crate::random_id(8),
                    escape(crate::bare(&jid))
                );
                self.send_stanza(stream, xml, None).await?;
            }
            Command::Roster => {
                self.emit(Event::Roster {
                    items: self.people.items(),
                })
                .await;
            }
            Command::Read { to, id } => {
                let xml = read_marker(&to, &id);
                if !self.send_direct(&to, &xml, None) {
                    self.send_stanza(stream, xml, None).await?;
                }
            }
            Command::History { with } => self.ask_history(stream, &with).await?,
            Command::Join { room, nick } => self.join(stream, &room, nick).await?,
            Command::Say { room, body, id } => {
                let id = id.unwrap_or_else(|| crate::random_id(16));
                self.send_message(stream, Session::room_message(&room, &body, &id), id)
                    .await?;
            }
            Command::Leave { room } => self.leave(stream, &room).await?,
            Command::SendFile { to, path } => self.send_file(&to, &path).await,
            Command::Quit => {}
        }
        Ok(())
    }

    /// Sends a message and asks at once for the acknowledgement that makes it `queued`.
    pub(crate) async fn send_message(
        &mut self,
        stream: &mut Stream,
        xml: String,
        id: String,
    ) -> Result<(), StreamError> {
        self.send_stanza(stream, xml, Some(id)).await?;
        if self.acks.enabled {
            stream.write("<r xmlns='urn:xmpp:sm:3'/>").await?;
        }
        Ok(())
    }

    /// Approves `jid`'s request if there is one, and asks for theirs unless we have it.
    async fn add(&mut self, stream: &mut Stream, jid: &str) -> Result<(), StreamError> {
        if self.people.asking.remove(jid) {
            self.send_stanza(stream, presence_to(jid, "subscribed"), None)
                .await?;
        }
        let subscription = self.people.roster.get(jid).map(|c| c.subscription.as_str());
        if !matches!(subscription, Some("to" | "both")) {
            self.send_stanza(stream, presence_to(jid, "subscribe"), None)
                .await?;
        }
        Ok(())
    }

    /// A command while no server is reachable: messages wait for the next login.
    async fn offline_command(&mut self, command: Command) {
        match command {
            Command::Send { to, body, id } => {
                let id = id.unwrap_or_else(|| crate::random_id(16));
                let xml = chat_message(&to, &body, &id);
                if !self.send_direct(&to, &xml, Some(&id)) {
                    self.pending.push(Unacked {
                        xml,
                        message: Some(id),
                    });
                }
            }
            Command::Read { to, id } if self.send_direct(&to, &read_marker(&to, &id), None) => {}
            Command::SendFile { to, path } => self.send_file(&to, &path).await,
            Command::Roster => {
                self.emit(Event::Roster {
                    items: self.people.items(),
                })
                .await;
            }
            Command::Say { room, body, id } => {
                let id = id.unwrap_or_else(|| crate::random_id(16));
                self.pending.push(Unacked {
                    xml: Session::room_message(&room, &body, &id),
                    message: Some(id),
                });
            }
            Command::Join { room, nick } => {
                let nick = nick.unwrap_or_else(|| self.user.clone());
                self.rooms.insert(crate::bare(&room).to_lowercase(), nick);
            }
            Command::Add { .. }
            | Command::Remove { .. }
            | Command::Read { .. }
            | Command::History { .. }
            | Command::Leave { .. } => {
                self.emit(Event::Error {
                    text: "no server is reachable now; try again when connected".to_owned(),
                })
                .await;
            }
            Command::Quit => {}
        }
    }

    /// Says, once per contact, which path the conversation takes.
    pub(crate) async fn tell_path(&mut self, with: &str) {
        let with = crate::bare(with).to_owned();
        if self.people.path_told.insert(with.clone()) {
            self.emit(Event::Path {
                with,
                path: crate::Path::Server,
            })
            .await;
        }
    }
}

/// A chat message asking for a receipt and a read marker, with an origin id.
fn chat_message(to: &str, body: &str, id: &str) -> String {
    format!(
        "<message to='{}' type='chat' id='{id}'><body>{}</body>\
         <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/>\
         <origin-id xmlns='urn:xmpp:sid:0' id='{id}'/></message>",
        escape(to),
        escape(body),
        id = escape(id)
    )
}

/// A read marker (XEP-0333) for message `id` from `to`.
fn read_marker(to: &str, id: &str) -> String {
    format!(
        "<message to='{}' type='chat' id='{}'><displayed xmlns='urn:xmpp:chat-markers:0' \
         id='{}'/></message>",
        escape(to),
        crate::random_id(12),
        escape(id)
    )
}

pub(crate) fn presence_to(to: &str, ty: &str) -> String {
    format!("<presence to='{}' type='{ty}'/>", escape(to))
}
