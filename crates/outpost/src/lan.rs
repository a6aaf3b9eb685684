//! The server's announcement on its LAN: DNS-SD over multicast DNS (RFC 6762, RFC 6763)
//! with mdns-sd, one service instance per client listener that is not on loopback:
//! `_xmpp-client._tcp.local.` (STARTTLS) or `_xmpps-client._tcp.local.` (TLS from the
//! first byte), TXT `domain=` the first domain served (and `domains=` all of them). A
//! listener on an unspecified address (`0.0.0.0`) is announced with the addresses of
//! every interface; one on a given address, with that address.

use std::net::SocketAddr;

use mdns_sd::{ServiceDaemon, ServiceInfo};
use outpost_server::ListenerKind;

pub(crate) struct Announcer {
    daemon: ServiceDaemon,
    names: Vec<String>,
}

impl Announcer {
    /// Announces the client listeners; `None` when there is nothing to announce (all on
    /// loopback, as by default) or multicast DNS cannot start (then it says why in the log).
    pub(crate) fn start(
        domains: &[String],
        listeners: &[(ListenerKind, SocketAddr)],
    ) -> Option<Announcer> {
        let first = domains.first()?;
        let services: Vec<(&str, SocketAddr)> = listeners
            .iter()
            .filter(|(_, addr)| !addr.ip().is_loopback())
            .filter_map(|(kind, addr)| match kind {
                ListenerKind::C2sStartTls => Some(("_xmpp-client._tcp.local.", *addr)),
                ListenerKind::C2sDirectTls => Some(("_xmpps-client._tcp.local.", *addr)),
                _ => None,
            })
            .collect();
        if services.is_empty() {
            return None;
        }
        let daemon = match ServiceDaemon::new() {
            Ok(daemon) => daemon,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start multicast DNS; not announcing on the LAN");
                return None;
            }
        };
        let host = format!("outpost-{}.local.", first.replace('.', "-"));
        let properties = [("domain", first.as_str()), ("domains", &domains.join(","))];
        let mut names = Vec::new();
        for (ty, addr) in services {
            let instance = format!("Outpost {first} {}", addr.port());
            let info = match addr.ip().is_unspecified() {
                true => ServiceInfo::new(ty, &instance, &host, (), addr.port(), &properties[..])
                    .map(ServiceInfo::enable_addr_auto),
                false => ServiceInfo::new(
                    ty,
                    &instance,
                    &host,
                    addr.ip(),
                    addr.port(),
                    &properties[..],
                ),
            };
            match info.and_then(|info| {
                let name = info.get_fullname().to_owned();
                daemon.register(info).map(|()| name)
            }) {
                Ok(name) => {
                    tracing::info!(service = %name, %addr, "announced on the LAN (mDNS)");
                    names.push(name);
                }
                Err(e) => tracing::warn!(error = %e, %addr, "cannot announce on the LAN"),
            }
        }
        Some(Announcer { daemon, names })
    }

    /// Says goodbye on the LAN (so clients forget this server at once) and stops.
    pub(crate) fn stop(self) {
        for name in &self.names {
            if let Ok(done) = self.daemon.unregister(name) {
                let _ = done.recv_timeout(std::time::Duration::from_millis(500));
            }
        }
        let _ = self.daemon.shutdown();
    }
}
