//! Finding a site server on the LAN when DNS names none: the DNS-SD services an Outpost
//! server announces over multicast DNS (`outpost serve`, `[listen] mdns`):
//! `_xmpp-client._tcp.local.` and `_xmpps-client._tcp.local.`, with TXT `domain` (and
//! `domains`) saying which domains it serves. Only a server of the account's domain is
//! taken; IPv4 addresses first.

use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent};

use crate::server::Server;

const SERVICES: [(&str, bool); 2] = [
    ("_xmpp-client._tcp.local.", false),
    ("_xmpps-client._tcp.local.", true),
];

/// The servers of `domain` that answer on the LAN within `wait`.
pub(crate) async fn find(domain: &str, wait: Duration) -> Vec<Server> {
    let Ok(daemon) = ServiceDaemon::new() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let receivers: Vec<_> = SERVICES
        .iter()
        .filter_map(|(ty, direct_tls)| daemon.browse(ty).ok().map(|rx| (rx, *direct_tls)))
        .collect();
    for (rx, direct_tls) in &receivers {
        while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, rx.recv_async()).await {
            let ServiceEvent::ServiceResolved(service) = event else {
                continue;
            };
            let ours = service
                .txt_properties
                .get_property_val_str("domains")
                .or_else(|| service.txt_properties.get_property_val_str("domain"))
                .is_some_and(|ds| ds.split(',').any(|d| d.eq_ignore_ascii_case(domain)));
            let mut addresses: Vec<_> = service.addresses.iter().map(|a| a.to_ip_addr()).collect();
            addresses.sort_by_key(|a| !a.is_ipv4());
            if let (true, Some(ip)) = (ours, addresses.first()) {
                let server = Server {
                    host: ip.to_string(),
                    port: service.port,
                    direct_tls: *direct_tls,
                };
                if !found.contains(&server) {
                    found.push(server);
                }
            }
        }
    }
    let _ = daemon.shutdown();
    found
}
