//! On a hub: serving a site's users while their site is down or cut off (ARCHITECTURE.md,
//! "Sites and hub").
//!
//! The hub holds a replica of each site's directory, so it can authenticate the site's
//! users. It serves them only while it cannot reach the site itself: the first login for a
//! site's user starts *standby* for that site if a connection attempt to the site fails;
//! while the site answers, the login is sent home with `<see-other-host/>`. In standby the
//! site's domain is local here: its users' sessions, their messages from other domains
//! (whose links fail over to the hub) and offline storage. Standby ends when the site has
//! caught up with its replication again; its users' sessions here are then sent home.

use std::collections::HashSet;
use std::sync::RwLock;

use tokio::sync::Notify;

/// The sites a hub can stand in for, and those it stands in for now.
#[derive(Default)]
pub(crate) struct Standby {
    sites: Vec<String>,
    active: RwLock<HashSet<String>>,
    /// Told when a standby ends (what the hub stored meanwhile goes back to the site).
    ended: Notify,
}

impl Standby {
    pub(crate) fn new(sites: Vec<String>) -> Standby {
        Standby {
            sites,
            active: RwLock::default(),
            ended: Notify::new(),
        }
    }

    /// The sites whose replica this hub keeps (none on a site).
    pub(crate) fn sites(&self) -> &[String] {
        &self.sites
    }

    pub(crate) fn is_site(&self, domain: &str) -> bool {
        self.sites.iter().any(|s| s == domain)
    }

    pub(crate) fn is_active(&self, domain: &str) -> bool {
        self.read().contains(domain)
    }

    /// The sites stood in for now, sorted.
    pub(crate) fn active(&self) -> Vec<String> {
        let mut list: Vec<String> = self.read().iter().cloned().collect();
        list.sort();
        list
    }

    /// Starts standing in for `domain`; returns whether it had not already.
    pub(crate) fn start(&self, domain: &str) -> bool {
        self.is_site(domain) && self.write().insert(domain.to_owned())
    }

    /// Stops standing in for `domain`; returns whether it had.
    pub(crate) fn stop(&self, domain: &str) -> bool {
        let stopped = self.write().remove(domain);
        if stopped {
            self.ended.notify_waiters();
        }
        stopped
    }

    /// What tells of a standby that ended.
    pub(crate) fn ended(&self) -> &Notify {
        &self.ended
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Standby;

    #[test]
    fn only_a_site_of_the_hub_can_be_stood_in_for() {
        let s = Standby::new(vec!["a.test".to_owned()]);
        assert!(!s.start("b.test"));
        assert!(s.start("a.test"));
        assert!(!s.start("a.test"));
        assert!(s.is_active("a.test"));
        assert_eq!(s.active(), ["a.test"]);
        assert!(s.stop("a.test"));
        assert!(!s.stop("a.test"));
        assert!(!s.is_active("a.test"));
    }
}
