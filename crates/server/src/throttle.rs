//! Throttling of failed logins, registrations per address, and a per-connection read rate
//! limit.
//!
//! Failed logins are counted three ways, because behind one office NAT many people share an
//! address, and one of them mistyping must not lock the others out:
//! - per address and account: after `per_pair` failures (default 5), that account from that
//!   address waits before it may try again;
//! - per account, from any address: after `per_account` failures (default 20), the account
//!   waits, whatever the address (guessing one account from many addresses);
//! - per address, any account: after `per_ip` failures (default 100) the address is refused
//!   until the window passes (guessing many accounts from one address).
//!
//! The first two wait exponentially: [`FIRST_DELAY`] after reaching the limit, doubling
//! with each further failure, never longer than the window. A count is forgotten once no
//! failure was added for a whole window; a successful login clears its account's counts.
//! The tables are pruned as they are used, so they cannot grow without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many tracked keys, expired entries are swept on insert.
const PRUNE_AT: usize = 4096;
/// The wait after an address-and-account or account count first reaches its limit.
const FIRST_DELAY: Duration = Duration::from_secs(15);

/// The limits of [`LoginThrottle`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoginLimits {
    pub(crate) per_ip: u32,
    pub(crate) per_account: u32,
    pub(crate) per_pair: u32,
    pub(crate) window: Duration,
}

/// Which count refused a login, for the log and the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    AddressAndAccount,
    Account,
    Address,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::AddressAndAccount => "address and account",
            Scope::Account => "account",
            Scope::Address => "address",
        }
    }
}

/// A login refused before its password is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Throttled {
    pub(crate) scope: Scope,
    pub(crate) retry_in: Duration,
}

/// Failures counted for one key.
#[derive(Clone, Copy, Debug)]
struct Count {
    /// When the first failure of this count happened (the address limit's window).
    first: Instant,
    last: Instant,
    failures: u32,
}

impl Count {
    fn new(now: Instant) -> Count {
        Count {
            first: now,
            last: now,
            failures: 0,
        }
    }

    fn expired(&self, now: Instant, window: Duration) -> bool {
        now.duration_since(self.last) >= window
    }

    /// How long a key with this count must still wait at `now`, exponentially.
    fn wait(&self, limit: u32, now: Instant, window: Duration) -> Option<Duration> {
        if self.failures < limit || self.expired(now, window) {
            return None;
        }
        let delay = FIRST_DELAY
            .saturating_mul(1 << (self.failures - limit).min(16))
            .min(window);
        (self.last + delay)
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }
}

#[derive(Default)]
struct Counts {
    ips: HashMap<IpAddr, Count>,
    accounts: HashMap<String, Count>,
    pairs: HashMap<(IpAddr, String), Count>,
}

pub(crate) struct LoginThrottle {
    limits: Mutex<LoginLimits>,
    counts: Mutex<Counts>,
}

impl LoginThrottle {
    pub(crate) fn new(limits: LoginLimits) -> Self {
        LoginThrottle {
            limits: Mutex::new(limits),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// New limits, for counts from now on (a configuration reload); counts are kept.
    pub(crate) fn set_limits(&self, limits: LoginLimits) {
        *lock(&self.limits) = limits;
    }

    /// Whether another attempt from `ip` for `account` is refused right now, and why.
    pub(crate) fn check(&self, now: Instant, ip: IpAddr, account: &str) -> Result<(), Throttled> {
        let l = *lock(&self.limits);
        let counts = lock(&self.counts);
        let pair = counts.pairs.get(&(ip, account.to_owned()));
        if let Some(retry_in) = pair.and_then(|c| c.wait(l.per_pair, now, l.window)) {
            return Err(Throttled {
                scope: Scope::AddressAndAccount,
                retry_in,
            });
        }
        let acct = counts.accounts.get(account);
        if let Some(retry_in) = acct.and_then(|c| c.wait(l.per_account, now, l.window)) {
            return Err(Throttled {
                scope: Scope::Account,
                retry_in,
            });
        }
        if let Some(c) = counts.ips.get(&ip)
            && c.failures >= l.per_ip
            && now.duration_since(c.first) < l.window
        {
            return Err(Throttled {
                scope: Scope::Address,
                retry_in: (c.first + l.window).saturating_duration_since(now),
            });
        }
        Ok(())
    }

    pub(crate) fn record_failure(&self, now: Instant, ip: IpAddr, account: Option<&str>) {
        let window = lock(&self.limits).window;
        let mut counts = lock(&self.counts);
        let ip_count = bump(&mut counts.ips, ip, now, window);
        if now.duration_since(ip_count.first) >= window {
            // The address limit counts in fixed windows.
            *ip_count = Count {
                failures: 1,
                ..Count::new(now)
            };
        }
        if let Some(account) = account {
            bump(&mut counts.accounts, account.to_owned(), now, window);
            bump(&mut counts.pairs, (ip, account.to_owned()), now, window);
        }
    }

    /// A successful login clears its account's counts (not the address's: one good
    /// password must not unlock guessing at other accounts).
    pub(crate) fn record_success(&self, ip: IpAddr, account: &str) {
        let mut counts = lock(&self.counts);
        counts.accounts.remove(account);
        counts.pairs.remove(&(ip, account.to_owned()));
    }

    /// Forgets the counts of `account` and of `address` (both when both are given, every
    /// count when neither is): `outpost admin unblock`. Returns how many were forgotten.
    pub(crate) fn unblock(&self, account: Option<&str>, address: Option<IpAddr>) -> usize {
        let mut counts = lock(&self.counts);
        let before = counts.ips.len() + counts.accounts.len() + counts.pairs.len();
        let account_matches = |a: &str| account.is_none_or(|x| x == a);
        let address_matches = |ip: &IpAddr| address.is_none_or(|x| x == *ip);
        if account.is_none() {
            counts.ips.retain(|ip, _| !address_matches(ip));
        }
        if address.is_none() {
            counts.accounts.retain(|a, _| !account_matches(a));
        }
        counts
            .pairs
            .retain(|(ip, a), _| !(address_matches(ip) && account_matches(a)));
        before - (counts.ips.len() + counts.accounts.len() + counts.pairs.len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a failure to `key`'s count (a new count when the old one expired) and returns it.
fn bump<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Count>,
    key: K,
    now: Instant,
    window: Duration,
) -> &mut Count {
    if map.len() >= PRUNE_AT {
        map.retain(|_, c| !c.expired(now, window));
    }
    let c = map.entry(key).or_insert_with(|| Count::new(now));
    if c.expired(now, window) {
        *c = Count::new(now);
    }
    c.failures = c.failures.saturating_add(1);
    c.last = now;
    c
}

/// Accounts created by in-band registration, per IP address and window (XEP-0077 §14.3
/// asks servers to guard against mass registration). Loopback is exempt: it is the
/// operator's own tools and tests.
pub(crate) struct RegistrationThrottle {
    per_ip: u32,
    window: Duration,
    ips: Mutex<HashMap<IpAddr, Count>>,
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
            .is_some_and(|c| now.duration_since(c.first) < self.window && c.failures >= self.per_ip)
    }

    /// Counts an account created from `ip`.
    pub(crate) fn record(&self, now: Instant, ip: IpAddr) {
        if !ip.is_loopback() {
            let mut ips = lock(&self.ips);
            let c = bump(&mut ips, ip, now, self.window);
            if now.duration_since(c.first) >= self.window {
                *c = Count {
                    failures: 1,
                    ..Count::new(now)
                };
            }
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

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(LoginLimits {
            per_ip: 100,
            per_account: 20,
            per_pair: 5,
            window: Duration::from_secs(300),
        })
    }

    #[test]
    fn one_user_mistyping_behind_a_nat_locks_out_only_that_user_there() {
        let t = throttle();
        let office: IpAddr = "192.0.2.1".parse().expect("ip");
        let home: IpAddr = "198.51.100.7".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..12 {
            t.record_failure(now, office, Some("alice@x"));
        }
        let refused = t.check(now, office, "alice@x").expect_err("throttled");
        assert_eq!(refused.scope, Scope::AddressAndAccount);
        assert!(t.check(now, office, "bob@x").is_ok(), "colleagues log in");
        assert!(
            t.check(now, home, "alice@x").is_ok(),
            "alice from elsewhere too"
        );
    }

    #[test]
    fn waits_grow_exponentially_and_end() {
        let t = throttle();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let now = Instant::now();
        for _ in 0..5 {
            t.record_failure(now, ip, Some("a@x"));
        }
        let first = t.check(now, ip, "a@x").expect_err("throttled").retry_in;
        assert_eq!(first, FIRST_DELAY);
        assert!(t.check(now + FIRST_DELAY, ip, "a@x").is_ok());
        t.record_failure(now + FIRST_DELAY, ip, Some("a@x"));
        let second = t
            .check(now + FIRST_DELAY, ip, "a@x")
            .expect_err("throttled")
            .retry_in;
        assert_eq!(second, FIRST_DELAY * 2);
        // A success clears the pair and the account.
        t.record_success(ip, "a@x");
        assert!(t.check(now + FIRST_DELAY, ip, "a@x").is_ok());
    }

    #[test]
    fn an_account_guessed_from_many_addresses_waits_everywhere() {
        let t = throttle();
        let now = Instant::now();
        for i in 0..20u8 {
            t.record_failure(now, IpAddr::from([10, 0, 0, i]), Some("a@x"));
        }
        let refused = t
            .check(now, "10.9.9.9".parse().expect("ip"), "a@x")
            .expect_err("throttled");
        assert_eq!(refused.scope, Scope::Account);
    }

    #[test]
    fn the_address_ceiling_covers_all_accounts_and_unblock_clears_it() {
        let t = throttle();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let now = Instant::now();
        for i in 0..100 {
            t.record_failure(now, ip, Some(&format!("u{i}@x")));
        }
        assert_eq!(
            t.check(now, ip, "other@x").map_err(|e| e.scope),
            Err(Scope::Address)
        );
        assert!(
            t.check(now + Duration::from_secs(301), ip, "other@x")
                .is_ok()
        );
        assert!(t.unblock(None, Some(ip)) > 0);
        assert!(t.check(now, ip, "other@x").is_ok());
        assert_eq!(t.unblock(None, None), 100, "the accounts' counts were left");
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
