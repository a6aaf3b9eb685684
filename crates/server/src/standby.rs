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
//!
//! On a cluster of hub nodes, standby is the cluster's: a node that starts or ends it says
//! so to the others ([`Mark`], a last-writer-wins register per site, stamped with the time
//! and the node), and repeats what it holds in its heartbeats, so a node that missed a
//! change, or joined later, comes to agree.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Whether a hub stands in for a site, as of when (ms) and which node decided: the later
/// mark wins, ties broken by the node's id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Mark {
    pub(crate) site: String,
    pub(crate) on: bool,
    pub(crate) ms: i64,
    pub(crate) node: String,
}

impl Mark {
    fn beats(&self, other: &Mark) -> bool {
        (self.ms, &self.node) > (other.ms, &other.node)
    }
}

/// Who hears of this node's own standby changes (the cluster).
pub(crate) type OnMark = Box<dyn Fn(&Mark) + Send + Sync>;

/// The sites a hub can stand in for, and those it stands in for now.
#[derive(Default)]
pub(crate) struct Standby {
    sites: Vec<String>,
    /// The last change of each site's standby, made here or at another node: the hub
    /// stands in for the sites whose mark is on.
    marks: RwLock<HashMap<String, Mark>>,
    /// On a cluster: this node's id, and who hears of its changes.
    cluster: OnceLock<(String, OnMark)>,
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
            ..Standby::default()
        }
    }

    /// This hub is the cluster node `node`: `tell` hears of each change it makes.
    pub(crate) fn in_cluster(&self, node: &str, tell: OnMark) {
        let _ = self.cluster.set((node.to_owned(), tell));
    }

    /// The sites whose replica this hub keeps (none on a site).
    pub(crate) fn sites(&self) -> &[String] {
        &self.sites
    }

    pub(crate) fn is_site(&self, domain: &str) -> bool {
        self.sites.iter().any(|s| s == domain)
    }

    pub(crate) fn is_active(&self, domain: &str) -> bool {
        self.read().get(domain).is_some_and(|m| m.on)
    }

    /// The sites stood in for now, sorted.
    pub(crate) fn active(&self) -> Vec<String> {
        let marks = self.read();
        let mut list: Vec<String> = marks
            .values()
            .filter(|m| m.on)
            .map(|m| m.site.clone())
            .collect();
        list.sort();
        list
    }

    /// Starts standing in for `domain`; returns whether it had not already.
    pub(crate) fn start(&self, domain: &str) -> bool {
        self.is_site(domain) && self.change(domain, true)
    }

    /// Stops standing in for `domain`; returns whether it had.
    pub(crate) fn stop(&self, domain: &str) -> bool {
        let stopped = self.change(domain, false);
        if stopped {
            self.ended.notify_waiters();
        }
        stopped
    }

    /// A change made here, if it changes anything: marked later than any mark this node
    /// knows of for the site, and told to the cluster.
    fn change(&self, site: &str, on: bool) -> bool {
        let node = self.cluster.get().map_or("", |(node, _)| node.as_str());
        let mut marks = self.write();
        let last = marks.get(site);
        if last.is_some_and(|m| m.on) == on {
            return false;
        }
        let mark = Mark {
            site: site.to_owned(),
            on,
            ms: crate::clock::now_ms().max(last.map_or(0, |m| m.ms + 1)),
            node: node.to_owned(),
        };
        marks.insert(site.to_owned(), mark.clone());
        drop(marks);
        if let Some((_, tell)) = self.cluster.get() {
            tell(&mark);
        }
        true
    }

    /// Another node's mark: taken if it is later than what this node knows of the site.
    /// Returns `Some(on)` when it changed whether this node stands in for the site.
    pub(crate) fn merge(&self, mark: &Mark) -> Option<bool> {
        if !self.is_site(&mark.site) {
            return None;
        }
        let mut marks = self.write();
        let was = marks.get(&mark.site);
        if was.is_some_and(|m| !mark.beats(m)) {
            return None;
        }
        let changed = was.is_some_and(|m| m.on) != mark.on;
        marks.insert(mark.site.clone(), mark.clone());
        drop(marks);
        if changed && !mark.on {
            self.ended.notify_waiters();
        }
        changed.then_some(mark.on)
    }

    /// Every site's last change, for the cluster's heartbeats.
    pub(crate) fn marks(&self) -> Vec<Mark> {
        self.read().values().cloned().collect()
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Mark>> {
        self.marks.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Mark>> {
        self.marks.write().unwrap_or_else(|p| p.into_inner())
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

    #[test]
    fn the_later_mark_wins_whatever_order_marks_come_in() {
        use super::Mark;
        use std::sync::{Arc, Mutex};
        let s = Standby::new(vec!["a.test".to_owned()]);
        let told = Arc::new(Mutex::new(Vec::new()));
        let t = told.clone();
        s.in_cluster("n1", Box::new(move |m| t.lock().unwrap().push(m.clone())));
        assert!(s.start("a.test"));
        let mine = told.lock().unwrap()[0].clone();
        assert_eq!((mine.on, mine.node.as_str()), (true, "n1"));
        let mark = |on, ms, node: &str| Mark {
            site: "a.test".to_owned(),
            on,
            ms,
            node: node.to_owned(),
        };
        // An older mark from another node changes nothing.
        assert_eq!(s.merge(&mark(false, mine.ms - 1, "n2")), None);
        assert!(s.is_active("a.test"));
        // A later one ends it here, and says so once.
        assert_eq!(s.merge(&mark(false, mine.ms + 5, "n2")), Some(false));
        assert!(!s.is_active("a.test"));
        assert_eq!(s.merge(&mark(false, mine.ms + 5, "n2")), None);
        // Same time: the node id decides.
        assert_eq!(s.merge(&mark(true, mine.ms + 5, "n3")), Some(true));
        assert_eq!(s.merge(&mark(false, mine.ms + 5, "n1")), None);
        // A change made here after that is marked later still, and told.
        assert!(s.stop("a.test"));
        let last = told.lock().unwrap().last().cloned().unwrap();
        assert!(!last.on && last.ms > mine.ms + 5, "{last:?}");
        // Marks for sites this hub does not serve are ignored.
        let other = Mark {
            site: "b.test".to_owned(),
            ..mark(true, i64::MAX, "n9")
        };
        assert_eq!(s.merge(&other), None);
        assert_eq!(s.marks().len(), 1);
    }
}
