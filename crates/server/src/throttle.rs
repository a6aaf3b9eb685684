//! Throttling of failed logins per IP address and per account, and a per-connection read
//! rate limit.
//!
//! Failed logins are counted in a fixed window; once a key reaches its limit, further
//! attempts are refused with `temporary-auth-failure` until the window ends, whatever the
//! password. The table is pruned as it is used, so it cannot grow without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many tracked keys, expired entries are swept on insert.
const PRUNE_AT: usize = 4096;

/// Events counted in a fixed window starting at the first one.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    /// Events in the window (failed logins, or registrations).
    failures: u32,
}

pub(crate) struct LoginThrottle {
    per_ip: u32,
    per_account: u32,
    window: Duration,
    ips: Mutex<HashMap<IpAddr, Window>>,
    accounts: Mutex<HashMap<String, Window>>,
}

impl LoginThrottle {
    pub(crate) fn new(per_ip: u32, per_account: u32, window: Duration) -> Self {
        LoginThrottle {
            per_ip,
            per_account,
            window,
            ips: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether another attempt from `ip` for `account` is refused right now.
    pub(crate) fn is_blocked(&self, now: Instant, ip: IpAddr, account: &str) -> bool {
        let over = |w: Option<&Window>, limit: u32| {
            w.is_some_and(|w| now.duration_since(w.start) < self.window && w.failures >= limit)
        };
        over(lock(&self.ips).get(&ip), self.per_ip)
            || over(lock(&self.accounts).get(account), self.per_account)
    }

    pub(crate) fn record_failure(&self, now: Instant, ip: IpAddr, account: Option<&str>) {
        bump(&mut lock(&self.ips), ip, now, self.window);
        if let Some(account) = account {
            bump(
                &mut lock(&self.accounts),
                account.to_owned(),
                now,
                self.window,
            );
        }
    }

    /// A successful login clears the account's count (not the address's: one good
    /// password must not unlock guessing at other accounts).
    pub(crate) fn record_success(&self, account: &str) {
        lock(&self.accounts).remove(account);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bump<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Window>,
    key: K,
    now: Instant,
    window: Duration,
) {
    if map.len() >= PRUNE_AT {
        map.retain(|_, w| now.duration_since(w.start) < window);
    }
    let w = map.entry(key).or_insert(Window {
        start: now,
        failures: 0,
    });
    if now.duration_since(w.start) >= window {
        *w = Window {
            start: now,
            failures: 0,
        };
    }
    w.failures = w.failures.saturating_add(1);
}

/// Accounts created by in-band registration, per IP address and window (XEP-0077 §14.3
/// asks servers to guard against mass registration). Loopback is exempt: it is the
/// operator's own tools and tests.
pub(crate) struct RegistrationThrottle {
    per_ip: u32,
    window: Duration,
    ips: Mutex<HashMap<IpAddr, Window>>,
}

impl RegistrationThrottle {
    pub(crate) fn new(per_ip: u32, window: Duration) -> Self {
        RegistrationThrottle {
            per_ip,
            window,
            ips: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may create another account now.
    pub(crate) fn allows(&self, now: Instant, ip: IpAddr) -> bool {
        if ip.is_loopback() {
            return true;
        }
        !lock(&self.ips)
            .get(&ip)
            .is_some_and(|w| now.duration_since(w.start) < self.window && w.failures >= self.per_ip)
    }

    /// Counts an account created from `ip`.
    pub(crate) fn record(&self, now: Instant, ip: IpAddr) {
        if !ip.is_loopback() {
            bump(&mut lock(&self.ips), ip, now, self.window);
        }
    }
}

/// A token bucket over bytes read from one connection. Reading past the budget is not an
/// error: the connection just waits, which is how a flood is slowed without hurting a
/// client that sent one large burst.
pub(crate) struct ReadBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ReadBudget {
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        ReadBudget {
            rate: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Spends `n` bytes; returns how long to wait before reading again.
    pub(crate) fn spend(&mut self, n: usize, now: Instant) -> Option<Duration> {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_and_unblocks_after_window() {
        let t = LoginThrottle::new(10, 3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..3 {
            assert!(!t.is_blocked(now, ip, "a@x"));
            t.record_failure(now, ip, Some("a@x"));
        }
        assert!(t.is_blocked(now, ip, "a@x"));
        assert!(
            !t.is_blocked(now, ip, "b@x"),
            "other accounts are not blocked"
        );
        let later = now + Duration::from_secs(61);
        assert!(!t.is_blocked(later, ip, "a@x"));
    }

    #[test]
    fn ip_limit_covers_all_accounts() {
        let t = LoginThrottle::new(2, 100, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let now = Instant::now();
        t.record_failure(now, ip, Some("a@x"));
        t.record_failure(now, ip, Some("b@x"));
        assert!(t.is_blocked(now, ip, "c@x"));
    }

    #[test]
    fn registrations_are_limited_per_address_but_not_on_loopback() {
        let t = RegistrationThrottle::new(2, Duration::from_secs(3600));
        let now = Instant::now();
        let remote: IpAddr = "192.0.2.7".parse().expect("ip");
        for _ in 0..2 {
            assert!(t.allows(now, remote));
            t.record(now, remote);
        }
        assert!(!t.allows(now, remote));
        assert!(t.allows(now, "192.0.2.8".parse().expect("ip")));
        assert!(t.allows(now + Duration::from_secs(3601), remote));
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..10 {
            t.record(now, local);
        }
        assert!(t.allows(now, local));
    }

    #[test]
    fn read_budget_waits_only_past_the_burst() {
        let now = Instant::now();
        let mut b = ReadBudget::new(1000, 2000, now);
        assert_eq!(b.spend(1500, now), None);
        let wait = b.spend(1500, now).expect("over budget");
        assert!(wait >= Duration::from_millis(999) && wait <= Duration::from_millis(1001));
        // After the wait the bucket has refilled what was owed.
        assert_eq!(b.spend(0, now + wait), None);
    }
}
