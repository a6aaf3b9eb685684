//! Finding a domain's servers in DNS (RFC 6120 §3.2.1, XEP-0368): the SRV records of
//! `_xmpps-client._tcp` (TLS from the first byte) and `_xmpp-client._tcp` (STARTTLS),
//! by priority, the heavier first among equals. The first is the client's home; a site
//! that lists its hub second gets failover to the hub with no configuration at all.

use std::net::SocketAddr;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use crate::server::Server;

/// A resolver asking `dns`, or the system's configured servers.
pub(crate) fn resolver(dns: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match dns {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut ns.connections {
                connection.port = addr.port();
            }
            let mut builder = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            );
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => Resolver::builder(provider)
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    // A client waits on this before it connects anywhere: a DNS server that does not
    // answer must not hold it long (the system's NXDOMAIN comes at once).
    builder.options_mut().attempts = 1;
    builder.options_mut().timeout = std::time::Duration::from_secs(2);
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The servers the SRV records of `domain` name, in the order to try them; empty when it
/// has none (the caller then tries the domain itself), `Err` when DNS could not say for
/// either service (one refused lookup does not discard what the other found).
pub(crate) async fn servers(resolver: &TokioResolver, domain: &str) -> Result<Vec<Server>, String> {
    let mut records = Vec::new();
    let mut failures = Vec::new();
    let names = [
        (format!("_xmpps-client._tcp.{domain}."), true),
        (format!("_xmpp-client._tcp.{domain}."), false),
    ];
    let (direct, starttls) = tokio::join!(
        resolver.srv_lookup(names[0].0.as_str()),
        resolver.srv_lookup(names[1].0.as_str())
    );
    for ((name, direct_tls), answer) in names.iter().zip([direct, starttls]) {
        let direct_tls = *direct_tls;
        match answer {
            Ok(lookup) => {
                for record in lookup.answers() {
                    if let RData::SRV(srv) = &record.data {
                        let target = srv.target.to_ascii();
                        let host = target.trim_end_matches('.');
                        // "." says the service is not offered here (RFC 2782).
                        if !host.is_empty() {
                            let server = Server {
                                host: host.to_owned(),
                                port: srv.port,
                                direct_tls,
                            };
                            records.push((srv.priority, std::cmp::Reverse(srv.weight), server));
                        }
                    }
                }
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => failures.push(format!("looking up {name} failed: {e}")),
        }
    }
    if failures.len() == 2 {
        return Err(failures.join("; "));
    }
    records.sort_by_key(|(priority, weight, _)| (*priority, *weight));
    Ok(records.into_iter().map(|(_, _, server)| server).collect())
}
