//! A small authoritative DNS server on loopback: it answers from a zone the test fills
//! (SRV and A records), says NXDOMAIN for every other name, and keeps a log of the
//! questions it was asked. Servers under test point `federation.dns_server` at it, so no
//! test asks a real DNS server anything.
//!
//! It runs as a task on the test's runtime ([`DnsServer::start`]) or, for tests that start
//! server processes and have no runtime, on a thread of its own ([`nxdomain_server`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record};
use tokio::net::UdpSocket;

pub use hickory_proto::rr::RecordType;

/// The zone and the log, shared with the serving task.
#[derive(Default)]
struct State {
    /// Records by lower-case fully qualified name.
    records: HashMap<String, Vec<RData>>,
    /// Every question, as (lower-case name, type).
    asked: Vec<(String, RecordType)>,
}

/// The server's task runs until the test's runtime ends (its thread, until the process
/// ends), whether or not this handle is kept.
pub struct DnsServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn fqdn(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

impl DnsServer {
    /// Binds UDP on 127.0.0.1:0 and serves an empty zone from a task.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("DNS address");
        let state = Arc::new(Mutex::new(State::default()));
        tokio::spawn(serve(socket, state.clone()));
        DnsServer { addr, state }
    }

    /// Binds UDP on 127.0.0.1:0 and serves an empty zone from a thread.
    pub fn start_on_thread() -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        let addr = socket.local_addr().expect("DNS address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = reply(&buf[..n], &shared) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer { addr, state }
    }

    /// Adds an SRV record: `name` is the full owner (`_xmpp-server._tcp.b.test`), `target`
    /// a host name or `.`.
    pub fn add_srv(&self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        let target = Name::from_str(&fqdn(target)).expect("target name");
        self.add(name, RData::SRV(SRV::new(priority, weight, port, target)));
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, RData::A(A(ip)));
    }

    fn add(&self, name: &str, data: RData) {
        let mut state = self.state.lock().expect("dns state");
        state.records.entry(fqdn(name)).or_default().push(data);
    }

    /// Whether a question of this type about `name` was asked.
    pub fn was_asked(&self, name: &str, ty: RecordType) -> bool {
        let name = fqdn(name);
        let state = self.state.lock().expect("dns state");
        state.asked.iter().any(|(n, t)| *n == name && *t == ty)
    }

    /// Every question asked so far.
    pub fn asked(&self) -> Vec<(String, RecordType)> {
        self.state.lock().expect("dns state").asked.clone()
    }
}

/// A DNS server on loopback that answers every question with NXDOMAIN, shared by
/// everything in this test process. For servers whose peers are all named by address: should
/// one still look a name up, it asks this one, never a real DNS server.
pub fn nxdomain_server() -> SocketAddr {
    static SERVER: OnceLock<DnsServer> = OnceLock::new();
    SERVER.get_or_init(DnsServer::start_on_thread).addr
}

async fn serve(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if let Some(reply) = reply(&buf[..n], &state) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The answer to one datagram, or nothing for what is not a DNS message.
fn reply(datagram: &[u8], state: &Mutex<State>) -> Option<Vec<u8>> {
    let request = Message::from_vec(datagram).ok()?;
    answer(&request, state).to_vec().ok()
}

fn answer(request: &Message, state: &Mutex<State>) -> Message {
    let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(query) = request.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(query.clone());
    let name = query.name.to_ascii().to_ascii_lowercase();
    let mut state = state.lock().expect("dns state");
    state.asked.push((name.clone(), query.query_type));
    match state.records.get(&name) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(records) => {
            for data in records
                .iter()
                .filter(|d| d.record_type() == query.query_type)
            {
                reply.add_answer(Record::from_rdata(query.name.clone(), 60, data.clone()));
            }
        }
    }
    reply
}
