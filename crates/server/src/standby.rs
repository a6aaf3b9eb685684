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

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The sites a hub can stand in for, and those it stands in for now.
#[derive(Default)]
pub(crate) struct Standby {
    sites: Vec<String>,
    active: RwLock<HashSet<String>>,
    /// Told when a standby ends (what the hub stored meanwhile goes back to the site).
    ended: Notify,
    /// When each site last answered a connection attempt: logins within `SEEN_UP_FOR`
    /// are sent home without trying again, so a burst of logins is not a burst of
    /// connection attempts.
    seen_up: Mutex<HashMap<String, Instant>>,
}

/// How long a site that answered counts as up: a login flood makes at most one connection
/// attempt a second, and a site that dies is stood in for at most a second later.
const SEEN_UP_FOR: Duration = Duration::from_secs(1);

impl Standby {
    pub(crate) fn new(sites: Vec<String>) -> Standby {
        Standby {
            sites,
            active: RwLock::default(),
            ended: Notify::new(),
            seen_up: Mutex::default(),
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

    /// Whether `domain` answered a connection attempt within the last few seconds.
    pub(crate) fn recently_up(&self, domain: &str, now: Instant) -> bool {
        let seen = self.seen_up.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(domain)
            .is_some_and(|at| now.duration_since(*at) < SEEN_UP_FOR)
    }

    /// `domain` answered a connection attempt at `now`.
    pub(crate) fn saw_up(&self, domain: &str, now: Instant) {
        let mut seen = self.seen_up.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(domain.to_owned(), now);
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

    #[test]
    fn a_site_seen_up_counts_as_up_for_a_few_seconds() {
        let s = Standby::new(vec!["a.test".to_owned()]);
        let t0 = std::time::Instant::now();
        assert!(!s.recently_up("a.test", t0));
        s.saw_up("a.test", t0);
        assert!(s.recently_up("a.test", t0 + super::SEEN_UP_FOR / 2));
        assert!(!s.recently_up("a.test", t0 + super::SEEN_UP_FOR));
    }
}
