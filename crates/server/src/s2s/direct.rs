//! The direct path to a peer: a TCP connection to its server, with STARTTLS or with TLS
//! from the first byte.
//!
//! Where the server is, in this order:
//!
//! 1. The peer's entry in `federation.peers`: that host and port, with STARTTLS. An
//!    operator's override always wins; DNS is not asked for SRV records.
//! 2. With `federation.srv_lookup`, the SRV records `_xmpps-server._tcp.<domain>`
//!    (XEP-0368: TLS from the first byte, ALPN `xmpp-server`, SNI naming the peer's
//!    domain, not the target host) and `_xmpp-server._tcp.<domain>` (RFC 6120 §3.2.1:
//!    STARTTLS). Both sets are merged and ordered as one (XEP-0368 §3): by priority, and
//!    by RFC 2782's weighted random choice within a priority. Each target's addresses are
//!    tried in turn, each connection with a timeout; the first that connects (and, for
//!    direct TLS, completes its handshake) carries the stream. A service whose only target
//!    is `.` is decidedly not offered (RFC 2782); when that leaves nothing to try, the
//!    domain has no server-to-server service and nothing else is tried.
//! 3. Without SRV records (no such name, no records, a failed lookup) or with
//!    `federation.srv_lookup` off: the domain's own addresses on port 5269, with STARTTLS
//!    (RFC 6120 §3.2.2).
//!
//! Names are resolved by one hickory resolver per federation ([`Dialer`]), which caches answers for
//! their TTL. It asks `federation.dns_server` (UDP, and TCP for truncated answers) when
//! that is set, else the servers of the system's resolver configuration.
//!
//! Tests send traffic to loopback only: every test harness that enables federation either
//! names each peer in `federation.peers` and turns `federation.srv_lookup` off, or points
//! `federation.dns_server` at a DNS server the test runs on loopback, so no test asks a
//! real DNS server anything.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use outpost_proto::s2s::Transport;
use rand::Rng;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::LinkEnv;
use super::conn::Conn;
use crate::config::FederationConfig;

/// A TCP connect that takes longer than this fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// While a connect gets no answer, a fresh attempt starts this often (see
/// `connect_staggered`).
const RESTART_EVERY: Duration = Duration::from_millis(500);
/// Attempts of one connect waiting at once.
const MAX_ATTEMPTS: usize = 20;
/// The port of `xmpp-server` when DNS names none (RFC 6120 §3.2.2).
const DEFAULT_PORT: u16 = 5269;
/// The ALPN protocol of server-to-server streams over direct TLS (XEP-0368 §4).
const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// How TLS is set up on a connection to a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Security {
    /// TLS from the first byte (`_xmpps-server`, XEP-0368).
    DirectTls,
    /// Plain TCP, then STARTTLS (`_xmpp-server`, RFC 6120 §5).
    StartTls,
}

/// One SRV record of either service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SrvRecord {
    pub(super) security: Security,
    pub(super) priority: u16,
    pub(super) weight: u16,
    pub(super) port: u16,
    /// The target host as DNS gave it, fully qualified (with its final dot).
    pub(super) target: String,
}

impl SrvRecord {
    /// RFC 2782: the target `.` means "no service here".
    fn is_root(&self) -> bool {
        self.target == "." || self.target.is_empty()
    }
}

/// What the SRV records of a domain say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SrvPlan {
    /// Targets to try, in this order.
    Targets(Vec<SrvRecord>),
    /// The domain publishes `.` as its only target(s): it offers no server-to-server
    /// service, and nothing else may be tried.
    Unavailable,
    /// No usable records: fall back to the domain itself (RFC 6120 §3.2.2).
    Absent,
}

/// Orders the records of both services as one set (XEP-0368 §3): by priority, lowest
/// first, and within a priority by RFC 2782's weighted random selection. `random(n)` must
/// return a number in `0..=n`; it is injected so that tests can fix the choices.
pub(super) fn order_srv(records: Vec<SrvRecord>, random: &mut dyn FnMut(u32) -> u32) -> SrvPlan {
    let (roots, mut usable): (Vec<SrvRecord>, Vec<SrvRecord>) =
        records.into_iter().partition(SrvRecord::is_root);
    if usable.is_empty() {
        return if roots.is_empty() {
            SrvPlan::Absent
        } else {
            SrvPlan::Unavailable
        };
    }
    // Stable, so records of a priority keep the order DNS gave; RFC 2782 then wants the
    // zero-weight ones first within each priority.
    usable.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut ordered = Vec::with_capacity(usable.len());
    let mut rest = usable.as_slice();
    while let Some(first) = rest.first() {
        let end = rest
            .iter()
            .position(|r| r.priority != first.priority)
            .unwrap_or(rest.len());
        let mut group: Vec<SrvRecord> = rest[..end].to_vec();
        rest = &rest[end..];
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total).min(total);
            let mut running = 0u32;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            ordered.push(group.remove(index));
        }
    }
    SrvPlan::Targets(ordered)
}

/// Somewhere to connect to: a host (a name or an address) and port, and how TLS starts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    /// The name to resolve; fully qualified names end with a dot so that no search
    /// domain is tried.
    host: String,
    port: u16,
    security: Security,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.security {
            Security::DirectTls => "xmpps",
            Security::StartTls => "xmpp",
        };
        let host = self.host.strip_suffix('.').unwrap_or(&self.host);
        write!(f, "{kind} {host}:{}", self.port)
    }
}

/// What a domain's targets are, and anything worth saying about how they were found.
struct Route {
    targets: Vec<Target>,
    /// Why SRV records were not used although they were asked for (a failed lookup), for
    /// the error should every target fail.
    note: Option<String>,
}

/// Why no stream could be opened on the direct path.
#[derive(Debug, thiserror::Error)]
pub(super) enum DialError {
    /// The domain's SRV records decline the service (RFC 2782 target `.`).
    #[error("{domain} offers no server-to-server service (its SRV target is \".\")")]
    NoService { domain: String },
    /// Every target failed; `failures` says how, one per target.
    #[error("cannot connect to {domain}: {}{}", failures.join("; "), srv_note.as_ref().map(|n| format!(" (SRV records unused: {n})")).unwrap_or_default())]
    Unreachable {
        domain: String,
        failures: Vec<String>,
        /// Why SRV records were not used although they were asked for.
        srv_note: Option<String>,
    },
}

/// Resolution of peers' addresses, built once per federation.
pub(crate) struct Dialer {
    /// `Err` when the system's resolver configuration cannot be read: then every lookup
    /// fails with that reason.
    resolver: Result<TokioResolver, String>,
}

impl Dialer {
    pub(crate) fn new(config: &FederationConfig) -> Dialer {
        let resolver = build_resolver(config);
        if let Err(e) = &resolver {
            warn!(error = %e, "no DNS resolver; peers without a federation.peers entry are unreachable");
        }
        Dialer { resolver }
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver.as_ref().map_err(Clone::clone)
    }

    /// The targets for `domain`, in the order to try them; `Err` when there is nothing to
    /// try.
    async fn route(&self, env: &LinkEnv, domain: &str) -> Result<Route, DialError> {
        if let Some(peer) = env.peer_override(domain) {
            return Ok(Route {
                targets: vec![Target {
                    host: peer.host().to_owned(),
                    port: peer.port(),
                    security: Security::StartTls,
                }],
                note: None,
            });
        }
        let fallback = |note| Route {
            targets: vec![Target {
                host: format!("{domain}."),
                port: DEFAULT_PORT,
                security: Security::StartTls,
            }],
            note,
        };
        if !env.config.srv_lookup {
            return Ok(fallback(None));
        }
        let (xmpps, xmpp) = tokio::join!(
            self.srv(domain, Security::DirectTls),
            self.srv(domain, Security::StartTls)
        );
        let mut records = Vec::new();
        let mut failures = Vec::new();
        for answer in [xmpps, xmpp] {
            match answer {
                Ok(r) => records.extend(r),
                Err(e) => failures.push(e),
            }
        }
        let plan = order_srv(records, &mut |n| rand::rng().random_range(0..=n));
        match plan {
            SrvPlan::Targets(ordered) => Ok(Route {
                targets: ordered
                    .into_iter()
                    .map(|r| Target {
                        host: r.target,
                        port: r.port,
                        security: r.security,
                    })
                    .collect(),
                note: None,
            }),
            SrvPlan::Unavailable => Err(DialError::NoService {
                domain: domain.to_owned(),
            }),
            SrvPlan::Absent if failures.is_empty() => Ok(fallback(None)),
            SrvPlan::Absent => Ok(fallback(Some(failures.join("; ")))),
        }
    }

    /// The records of one service: empty when the name has none (or does not exist), `Err`
    /// when the lookup itself failed.
    async fn srv(&self, domain: &str, security: Security) -> Result<Vec<SrvRecord>, String> {
        let service = match security {
            Security::DirectTls => "_xmpps-server",
            Security::StartTls => "_xmpp-server",
        };
        let name = format!("{service}._tcp.{domain}.");
        let resolver = self.resolver()?;
        match resolver.srv_lookup(name.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        security,
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!("SRV lookup of {service} failed: {}", brief(&e))),
        }
    }

    /// The addresses of a target, in the resolver's order.
    async fn addresses(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        // An address needs no resolver, even when there is none.
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let resolver = self.resolver()?;
        match resolver.lookup_ip(target.host.as_str()).await {
            Ok(ips) => {
                let addrs: Vec<SocketAddr> = ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip, target.port))
                    .collect();
                if addrs.is_empty() {
                    Err("no address".to_owned())
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_no_records_found() => Err("no address".to_owned()),
            Err(e) => Err(format!("address lookup failed: {}", brief(&e))),
        }
    }

    /// Connects to one target: each of its addresses in turn until one connects (and, for
    /// direct TLS, completes the handshake naming `domain`).
    async fn dial(
        &self,
        env: &LinkEnv,
        target: &Target,
        domain: &str,
    ) -> Result<(Conn, Transport), String> {
        let mut last = String::from("no address");
        for addr in self.addresses(target).await? {
            let tcp = match tcp_connect(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let mut conn = Conn::Plain(tcp);
            match target.security {
                Security::StartTls => return Ok((conn, Transport::StartTls)),
                // XEP-0368 §3: SNI names the domain we want, not the host serving it.
                Security::DirectTls => {
                    // The links' own configuration for the domain (see `trust`), with
                    // ALPN `xmpp-server`.
                    let mut tls = (*env.tls_client_for(domain)).clone();
                    tls.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
                    if conn.connect_tls(&Arc::new(tls), domain).await {
                        return Ok((conn, Transport::DirectTls));
                    }
                    last = "TLS handshake failed".to_owned();
                }
            }
        }
        Err(last)
    }
}

/// A resolver asking `federation.dns_server`, or the system's configured servers.
fn build_resolver(config: &FederationConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match config.dns_server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut ns.connections {
                connection.port = addr.port();
            }
            let mut builder = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            );
            // That server answers everything, the hosts file included.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => Resolver::builder(provider)
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    // Fewer retries than the default: a link retries the whole attempt anyway.
    builder.options_mut().attempts = 1;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// A resolver error in a few words.
fn brief(e: &NetError) -> String {
    if e.is_nx_domain() {
        "no such domain".to_owned()
    } else {
        e.to_string()
    }
}

/// Connects to `domain`'s server. Returns the socket and how TLS is to be negotiated on it,
/// or why no connection could be made, naming every target tried.
pub(super) async fn connect(env: &LinkEnv, domain: &str) -> Result<(Conn, Transport), DialError> {
    let dialer = &env.dialer;
    let route = dialer.route(env, domain).await?;
    let mut failures = Vec::with_capacity(route.targets.len());
    for target in &route.targets {
        match dialer.dial(env, target, domain).await {
            Ok(c) => {
                debug!(%target, "connected");
                return Ok(c);
            }
            Err(e) => failures.push(format!("{target}: {e}")),
        }
    }
    Err(DialError::Unreachable {
        domain: domain.to_owned(),
        failures,
        srv_note: route.note,
    })
}

/// Whether `domain`'s server accepts TCP connections again: a cheap probe while its link
/// waits out a back-off. Finds the server exactly as [`connect`] does; any target that
/// accepts a connection counts.
pub(super) async fn probe(env: &LinkEnv, domain: &str) -> bool {
    let dialer = &env.dialer;
    let Ok(route) = dialer.route(env, domain).await else {
        return false;
    };
    for target in &route.targets {
        let Ok(addrs) = dialer.addresses(target).await else {
            continue;
        };
        for addr in addrs {
            if tcp_connect(addr).await.is_ok() {
                return true;
            }
        }
    }
    false
}

async fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    with_timeout(connect_staggered(addr)).await
}

/// A TCP connection to `host` (a name the system resolves, or an address) on `port`, for
/// endpoints given as URLs (`federation.websocket_peers`).
pub(super) async fn tcp_connect_host(host: &str, port: u16) -> std::io::Result<TcpStream> {
    with_timeout(async {
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in tokio::net::lookup_host((host, port)).await? {
            match connect_staggered(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = e,
            }
        }
        Err(last)
    })
    .await
}

/// Connects to `addr`, starting a fresh attempt every [`RESTART_EVERY`] while the earlier
/// ones get no answer, and keeping the first that connects. On a dead path the kernel
/// resends a SYN after 1, 3, 7 s…: a path that comes back in between is found by the next
/// fresh SYN, within half a second, not at the next resend. An attempt that fails outright
/// (refused, unreachable) fails the connect once none is left waiting.
async fn connect_staggered(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut attempts = FuturesUnordered::new();
    attempts.push(TcpStream::connect(addr));
    let mut restart = tokio::time::interval(RESTART_EVERY);
    restart.tick().await;
    loop {
        tokio::select! {
            done = attempts.next() => match done {
                Some(Ok(tcp)) => return Ok(tcp),
                Some(Err(e)) if attempts.is_empty() => return Err(e),
                Some(Err(_)) | None => {}
            },
            _ = restart.tick(), if attempts.len() < MAX_ATTEMPTS => {
                attempts.push(TcpStream::connect(addr));
            }
        }
    }
}

async fn with_timeout(
    connect: impl Future<Output = std::io::Result<TcpStream>>,
) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(security: Security, priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            security,
            priority,
            weight,
            port: 5269,
            target: target.to_owned(),
        }
    }

    fn targets(plan: SrvPlan) -> Vec<String> {
        match plan {
            SrvPlan::Targets(t) => t.into_iter().map(|r| r.target).collect(),
            other => panic!("expected targets, got {other:?}"),
        }
    }

    /// A random source that returns the given numbers in turn, checking each bound.
    fn script(picks: &[u32]) -> impl FnMut(u32) -> u32 + '_ {
        let mut next = picks.iter();
        move |n| {
            let pick = *next.next().expect("a scripted pick");
            assert!(pick <= n, "pick {pick} out of 0..={n}");
            pick
        }
    }

    #[test]
    fn lower_priority_values_come_first() {
        let records = vec![
            rec(Security::StartTls, 20, 0, "c."),
            rec(Security::StartTls, 10, 0, "b."),
            rec(Security::StartTls, 0, 0, "a."),
        ];
        let plan = order_srv(records, &mut script(&[0, 0, 0]));
        assert_eq!(targets(plan), ["a.", "b.", "c."]);
    }

    #[test]
    fn weights_pick_by_running_sum() {
        // Weights 10, 30, 60 → running sums 10, 40, 100.
        let records = vec![
            rec(Security::StartTls, 5, 10, "light."),
            rec(Security::StartTls, 5, 30, "middle."),
            rec(Security::StartTls, 5, 60, "heavy."),
        ];
        // 41 lands on "heavy" (40 < 41 ≤ 100); then of 10 and 30, 11 lands on "middle"
        // (10 < 11 ≤ 40); "light" is left.
        let plan = order_srv(records.clone(), &mut script(&[41, 11, 10]));
        assert_eq!(targets(plan), ["heavy.", "middle.", "light."]);
        // 1 lands on the first record with a running sum ≥ 1.
        let plan = order_srv(records, &mut script(&[1, 1, 1]));
        assert_eq!(targets(plan), ["light.", "middle.", "heavy."]);
    }

    #[test]
    fn zero_weights_go_first_and_win_only_on_zero() {
        let records = vec![
            rec(Security::StartTls, 0, 5, "weighted."),
            rec(Security::StartTls, 0, 0, "zero."),
        ];
        // Zero-weight records are placed first (RFC 2782), so a pick of 0 selects them.
        let plan = order_srv(records.clone(), &mut script(&[0, 0]));
        assert_eq!(targets(plan), ["zero.", "weighted."]);
        // Any other pick passes them by.
        let plan = order_srv(records, &mut script(&[1, 0]));
        assert_eq!(targets(plan), ["weighted.", "zero."]);
        // All zero: the random source is asked for 0..=0, and DNS order is kept.
        let plan = order_srv(
            vec![
                rec(Security::StartTls, 0, 0, "first."),
                rec(Security::StartTls, 0, 0, "second."),
            ],
            &mut script(&[0, 0]),
        );
        assert_eq!(targets(plan), ["first.", "second."]);
    }

    #[test]
    fn both_services_are_ordered_as_one_set() {
        let records = vec![
            rec(Security::DirectTls, 10, 0, "tls-late."),
            rec(Security::StartTls, 0, 0, "plain-early."),
            rec(Security::DirectTls, 0, 0, "tls-early."),
            rec(Security::StartTls, 20, 0, "plain-late."),
        ];
        let SrvPlan::Targets(ordered) = order_srv(records, &mut script(&[0, 0, 0, 0])) else {
            panic!("expected targets");
        };
        let got: Vec<(Security, &str)> = ordered
            .iter()
            .map(|r| (r.security, r.target.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Security::StartTls, "plain-early."),
                (Security::DirectTls, "tls-early."),
                (Security::DirectTls, "tls-late."),
                (Security::StartTls, "plain-late."),
            ]
        );
    }

    #[test]
    fn a_root_target_means_no_service_and_no_fallback() {
        let plan = order_srv(vec![rec(Security::StartTls, 0, 0, ".")], &mut script(&[]));
        assert_eq!(plan, SrvPlan::Unavailable);
        let plan = order_srv(
            vec![
                rec(Security::DirectTls, 0, 0, "."),
                rec(Security::StartTls, 0, 0, "."),
            ],
            &mut script(&[]),
        );
        assert_eq!(plan, SrvPlan::Unavailable);
        // One service declined, the other offered: the offered one is used.
        let plan = order_srv(
            vec![
                rec(Security::DirectTls, 0, 0, "."),
                rec(Security::StartTls, 5, 0, "xmpp.example."),
            ],
            &mut script(&[0]),
        );
        assert_eq!(targets(plan), ["xmpp.example."]);
    }

    #[test]
    fn no_records_mean_fallback() {
        assert_eq!(order_srv(Vec::new(), &mut script(&[])), SrvPlan::Absent);
    }

    #[test]
    fn targets_display_compactly() {
        let t = Target {
            host: "xmpp.example.".to_owned(),
            port: 5270,
            security: Security::DirectTls,
        };
        assert_eq!(t.to_string(), "xmpps xmpp.example:5270");
    }
}
