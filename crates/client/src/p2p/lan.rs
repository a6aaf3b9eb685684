//! Serverless presence on the LAN (XEP-0174): while no server is reachable, the client
//! announces itself as `_presence._tcp.local.` over multicast DNS, with the port it takes
//! direct links on, and listens for its contacts' announcements. The TXT record carries
//! XEP-0174's fields and Outpost's own: `jid` (the account) and `device`, so a contact
//! whose device key was pinned before is dialed with that key; anyone else is ignored.

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

use super::link::LinkEvent;

const SERVICE: &str = "_presence._tcp.local.";

/// A contact's device announced on the LAN.
pub(crate) struct Neighbour {
    pub(crate) jid: String,
    pub(crate) device: String,
    pub(crate) addresses: Vec<(String, u16)>,
}

/// Our announcement and the browse of others'; both end when this is dropped.
pub(crate) struct LanPresence {
    daemon: ServiceDaemon,
    name: Option<String>,
}

impl LanPresence {
    /// Announces `jid`'s `device` taking links on `port`, and reports the devices other
    /// clients announce as [`LinkEvent::Neighbour`]s.
    pub(crate) fn start(
        jid: &str,
        device: &str,
        port: u16,
        events: mpsc::Sender<LinkEvent>,
    ) -> Result<LanPresence, String> {
        let daemon = ServiceDaemon::new().map_err(|e| e.to_string())?;
        let user = jid.split('@').next().unwrap_or(jid);
        // XEP-0174 §6.1: the instance is user@machine; the device id stands for the machine.
        let instance = format!("{user}@{device}");
        let host = format!("{device}.local.");
        let properties = [
            ("txtvers", "1"),
            ("status", "avail"),
            ("port.p2pj", &port.to_string()),
            ("jid", jid),
            ("device", device),
        ];
        let mut presence = LanPresence { daemon, name: None };
        let info = ServiceInfo::new(SERVICE, &instance, &host, (), port, &properties[..])
            .map(ServiceInfo::enable_addr_auto)
            .map_err(|e| e.to_string())?;
        presence.name = Some(info.get_fullname().to_owned());
        presence.daemon.register(info).map_err(|e| e.to_string())?;
        let browse = presence.daemon.browse(SERVICE).map_err(|e| e.to_string())?;
        let me = (jid.to_owned(), device.to_owned());
        tokio::spawn(async move {
            while let Ok(event) = browse.recv_async().await {
                let ServiceEvent::ServiceResolved(service) = event else {
                    continue;
                };
                let txt = &service.txt_properties;
                let (Some(jid), Some(device)) = (
                    txt.get_property_val_str("jid"),
                    txt.get_property_val_str("device"),
                ) else {
                    continue;
                };
                if (jid, device) == (me.0.as_str(), me.1.as_str()) {
                    continue;
                }
                let addresses = service
                    .addresses
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .filter(std::net::IpAddr::is_ipv4)
                    .map(|ip| (ip.to_string(), service.port))
                    .collect();
                let neighbour = Neighbour {
                    jid: jid.to_owned(),
                    device: device.to_owned(),
                    addresses,
                };
                if events.send(LinkEvent::Neighbour(neighbour)).await.is_err() {
                    return;
                }
            }
        });
        Ok(presence)
    }
}

impl Drop for LanPresence {
    fn drop(&mut self) {
        // A goodbye, so the others forget us at once; then the daemon (and the browse) ends.
        if let Some(name) = &self.name {
            let _ = self.daemon.unregister(name);
        }
        let _ = self.daemon.shutdown();
    }
}
