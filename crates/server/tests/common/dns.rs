//! A small authoritative DNS server on loopback for federation tests: it answers from a
//! zone the test fills (SRV and A records), says NXDOMAIN for every other name, and keeps
//! a log of the questions it was asked. Servers under test point `federation.dns_server`
//! at it, so no test asks a real DNS server anything.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// The zone and the log, shared with the serving task.
#[derive(Default)]
struct State {
    /// Records by lower-case fully qualified name.
    records: HashMap<String, Vec<RData>>,
    /// Every question, as (lower-case name, type).
    asked: Vec<(String, RecordType)>,
}

/// The server's task runs until the test's runtime ends, whether or not this handle is
/// kept.
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
    /// Binds UDP on 127.0.0.1:0 and serves an empty zone.
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("DNS address");
        let state = Arc::new(Mutex::new(State::default()));
        tokio::spawn(serve(socket, state.clone()));
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

async fn serve(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let reply = answer(&request, &state);
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
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
