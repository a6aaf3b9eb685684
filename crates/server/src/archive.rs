//! What the message archive (XEP-0313) keeps, under which id, and by whose preferences
//! (XEP-0441). Delivery asks it at routing time; the queries are `mam`'s.
//!
//! **Ids.** An archive id is a number the server hands out when it routes a message: the
//! receiving time in milliseconds in its high bits and a counter below, so ids grow with
//! time and a time range is an id range, and it is never handed out twice (it goes on from
//! the highest stored id after a restart, even if the clock went back). The same number
//! is the message's XEP-0359 stanza-id in both ends' archives, written as 13 characters
//! of base 32 so that ids sort as text as they do as numbers.
//!
//! **What is kept** follows what clients expect (XEP-0313 §5, XEP-0334): chat and normal
//! messages with content (a body, a subject, an encrypted payload, a receipt or marker, an
//! invitation, a call offer) or the `<store/>` hint, never `<no-store/>` or
//! `<no-permanent-store/>`, headlines, errors or bare chat states. Group chat messages are
//! the room's to archive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use minidom::Element;
use outpost_proto::stanza::ns;
use outpost_store::{ArchiveDefault, ArchivePrefs, Store, StoreError};

use crate::config::ArchiveConfig;

/// Bits of an id below the millisecond: a counter, then the server's tag.
const COUNTER_BITS: u32 = 20;
/// The low bits of an id name the server that gave it out, so that a hub and its sites,
/// which merge archives, never give two messages the same id (see [`node_tag`]): 4,096
/// ids per millisecond remain.
const TAG_BITS: u32 = 8;
/// Crockford's base 32, lower case: no letters that read as digits.
const DIGITS: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of an encoded id: 13 × 5 bits cover 64.
const ID_CHARS: usize = 13;

/// Payloads that make a message worth keeping though it has no body.
const CONTENT: &[(&str, &str)] = &[
    ("encrypted", ns::OMEMO_LEGACY),
    ("encrypted", ns::OMEMO),
    ("encryption", ns::EME),
    ("received", ns::RECEIPTS),
    ("displayed", ns::MARKERS),
    ("received", ns::MARKERS),
    ("acknowledged", ns::MARKERS),
    ("x", ns::CONFERENCE),
    ("propose", ns::JINGLE_MESSAGE),
    ("proceed", ns::JINGLE_MESSAGE),
    ("accept", ns::JINGLE_MESSAGE),
    ("reject", ns::JINGLE_MESSAGE),
    ("retract", ns::JINGLE_MESSAGE),
    ("finish", ns::JINGLE_MESSAGE),
];

/// The archive's policy and id clock, shared by every session.
pub(crate) struct Archive {
    enabled: AtomicBool,
    /// Days messages are kept; 0 for ever.
    retention_days: AtomicU32,
    last_id: AtomicI64,
    /// This server's tag in the low bits of every id it gives out (a cluster node's is
    /// set when it joins, so that no two nodes give out the same id).
    tag: AtomicI64,
    /// Preferences of the users who set any; everyone else archives everything.
    prefs: RwLock<HashMap<String, Arc<ArchivePrefs>>>,
    /// Told of a user whose preferences this server changed (a cluster's other nodes);
    /// what it returns is done once they know.
    on_change: std::sync::OnceLock<OnChange>,
    /// Other servers (a cluster's nodes) write to the same archive.
    shared: AtomicBool,
}

/// See [`Archive::on_change`].
pub(crate) type OnChange = Box<
    dyn Fn(&str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync,
>;

impl Archive {
    /// Loads the preferences and the highest id from the store; `tag` names this server
    /// in its ids ([`node_tag`]).
    pub(crate) async fn load(
        store: &dyn Store,
        config: &ArchiveConfig,
        tag: i64,
    ) -> Result<Archive, StoreError> {
        let last = store.archive_last_id().await?;
        let prefs = store
            .all_archive_prefs()
            .await?
            .into_iter()
            .map(|(user, p)| (user, Arc::new(p)))
            .collect();
        Ok(Archive {
            enabled: AtomicBool::new(config.enabled),
            retention_days: AtomicU32::new(config.retention_days),
            last_id: AtomicI64::new(last),
            tag: AtomicI64::new(tag & ((1 << TAG_BITS) - 1)),
            prefs: RwLock::new(prefs),
            on_change: std::sync::OnceLock::new(),
            shared: AtomicBool::new(false),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A reload: whether messages are archived from now on, and for how long.
    pub(crate) fn reload(&self, config: &ArchiveConfig) {
        self.enabled.store(config.enabled, Ordering::Relaxed);
        self.retention_days
            .store(config.retention_days, Ordering::Relaxed);
    }

    /// Days messages are kept; 0 for ever.
    pub(crate) fn retention_days(&self) -> u32 {
        self.retention_days.load(Ordering::Relaxed)
    }

    /// `id` is taken by a row that came from elsewhere (a site's archive replicated to its
    /// hub): ids handed out from now on are above it, so a message of ours never takes an
    /// id a replicated row holds. A site whose clock runs ahead moves the hub's ids ahead
    /// with it; they stay unique and growing.
    pub(crate) fn observe(&self, id: i64) {
        self.last_id.fetch_max(id, Ordering::Relaxed);
    }

    /// A new id, above every id handed out or observed before, at least the id of
    /// `now_ms`, and with this server's tag.
    pub(crate) fn next_id(&self, now_ms: i64) -> i64 {
        let tag = self.tag.load(Ordering::Relaxed);
        let floor = id_at(now_ms) | tag;
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let above = ((last >> TAG_BITS).saturating_add(1) << TAG_BITS) | tag;
            let next = floor.max(above);
            match self.last_id.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// The user's preferences, if they set any.
    pub(crate) fn prefs(&self, user: &str) -> Option<Arc<ArchivePrefs>> {
        let prefs = self.prefs.read().unwrap_or_else(|p| p.into_inner());
        prefs.get(user).cloned()
    }

    /// Keeps the preferences a user just stored, or forgets them (`None`: the account is
    /// gone).
    /// Sets the tag of the ids given out from now on (a cluster node's own, 1 to 255):
    /// other nodes write to the same archive from now on.
    pub(crate) fn set_tag(&self, tag: i64) {
        self.tag
            .store(tag & ((1 << TAG_BITS) - 1), Ordering::Relaxed);
        self.shared.store(true, Ordering::Relaxed);
    }

    /// Whether other servers (a cluster's nodes) write to this archive too, so a row
    /// whose id a client saw may still be on its way to the disk at another node.
    pub(crate) fn shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// Who to tell when [`Archive::changed`] is called (once).
    pub(crate) fn on_change(&self, tell: OnChange) {
        let _ = self.on_change.set(tell);
    }

    /// A user changed their preferences here: remember them, and return once whoever
    /// asked to be told knows.
    pub(crate) async fn changed(&self, user: &str, prefs: Option<ArchivePrefs>) {
        self.remember(user, prefs);
        if let Some(tell) = self.on_change.get() {
            tell(user).await;
        }
    }

    pub(crate) fn remember(&self, user: &str, prefs: Option<ArchivePrefs>) {
        let mut map = self.prefs.write().unwrap_or_else(|p| p.into_inner());
        match prefs {
            Some(p) => map.insert(user.to_owned(), Arc::new(p)),
            None => map.remove(user),
        };
    }
}

/// What a user's preferences say of messages exchanged with `with` (a bare JID):
/// `Some(answer)`, or `None` when it depends on whether `with` is in the roster.
pub(crate) fn decision(prefs: Option<&ArchivePrefs>, with: &str) -> Option<bool> {
    let Some(p) = prefs else {
        return Some(true);
    };
    if p.never.iter().any(|j| j == with) {
        return Some(false);
    }
    if p.always.iter().any(|j| j == with) {
        return Some(true);
    }
    match p.default {
        ArchiveDefault::Always => Some(true),
        ArchiveDefault::Never => Some(false),
        ArchiveDefault::Roster => None,
    }
}

/// Whether a one-to-one message is worth keeping in the archive (see the module docs).
pub(crate) fn worth_archiving(el: &Element) -> bool {
    worth_keeping(el, true)
}

/// Whether a one-to-one message is worth keeping, in the archive (`permanent`) or for a
/// while, in the offline store, where `<no-permanent-store/>` does not forbid it.
pub(crate) fn worth_keeping(el: &Element, permanent: bool) -> bool {
    if el.name() != "message" {
        return false;
    }
    if !matches!(el.attr("type"), None | Some("chat" | "normal")) {
        return false;
    }
    if forbids_storing(el) || (permanent && el.has_child("no-permanent-store", ns::HINTS)) {
        return false;
    }
    el.has_child("store", ns::HINTS)
        || el.children().any(|c| {
            (c.ns() == ns::CLIENT && matches!(c.name(), "body" | "subject"))
                || CONTENT.iter().any(|&(name, n)| c.is(name, n))
        })
}

/// Whether the sender asked that the message be stored nowhere (XEP-0334 `<no-store/>`).
pub(crate) fn forbids_storing(el: &Element) -> bool {
    el.has_child("no-store", ns::HINTS)
}

/// The first id of the millisecond `ms`.
/// The tag of a server's archive ids: 0 for a hub, and for a site one of 1 to 255 from a
/// hash of its domain, so a site's ids never meet its hub's, and two sites of one hub share
/// a tag with a chance of 1 in 255 (their ids could then meet only when both give one out
/// in the same millisecond as the same count).
pub(crate) fn node_tag(hub: bool, domain: &str) -> i64 {
    if hub {
        return 0;
    }
    // FNV-1a: the same on every build.
    let hash = domain.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1 + i64::try_from(hash % 255).unwrap_or(0)
}

pub(crate) fn id_at(ms: i64) -> i64 {
    ms.max(0).saturating_mul(1 << COUNTER_BITS)
}

/// The millisecond an id was handed out in.
pub(crate) fn time_of(id: i64) -> i64 {
    id >> COUNTER_BITS
}

/// An id as a stanza-id: 13 base-32 characters, most significant first.
pub(crate) fn encode_id(id: i64) -> String {
    let mut n = id as u64;
    let mut out = [0u8; ID_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 31) as usize];
        n >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// The id a stanza-id stands for, if it is one of ours.
pub(crate) fn decode_id(text: &str) -> Option<i64> {
    if text.len() != ID_CHARS {
        return None;
    }
    let mut n: u64 = 0;
    for b in text.bytes() {
        let digit = DIGITS.iter().position(|&d| d == b)?;
        n = n.checked_mul(32)?.checked_add(digit as u64)?;
    }
    i64::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(last: i64) -> Archive {
        tagged(last, 0)
    }

    fn tagged(last: i64, tag: i64) -> Archive {
        Archive {
            enabled: AtomicBool::new(true),
            retention_days: AtomicU32::new(0),
            last_id: AtomicI64::new(last),
            tag: AtomicI64::new(tag),
            prefs: RwLock::new(HashMap::new()),
            on_change: std::sync::OnceLock::new(),
            shared: AtomicBool::new(false),
        }
    }

    #[test]
    fn ids_grow_and_carry_their_time() {
        let a = archive(0);
        let t = 1_700_000_000_000;
        let first = a.next_id(t);
        assert_eq!(time_of(first), t);
        let second = a.next_id(t);
        assert_eq!(second, first + (1 << TAG_BITS));
        // The clock going back does not make ids go back.
        let third = a.next_id(t - 5_000);
        assert_eq!(third, second + (1 << TAG_BITS));
        assert_eq!(time_of(a.next_id(t + 1)), t + 1);
        // After a restart, ids go on above the highest stored one.
        let restarted = archive(third + 100);
        assert!(restarted.next_id(t) > third + 100);
    }

    #[test]
    fn a_hub_and_its_sites_never_give_out_the_same_id() {
        let t = 1_700_000_000_000;
        let site_tag = node_tag(false, "site1.test");
        assert!((1..256).contains(&site_tag));
        assert_eq!(node_tag(false, "site1.test"), site_tag);
        let (hub, site) = (tagged(0, node_tag(true, "hub.test")), tagged(0, site_tag));
        let mut ids = std::collections::HashSet::new();
        for _ in 0..1_000 {
            assert!(ids.insert(hub.next_id(t)));
            assert!(ids.insert(site.next_id(t)));
        }
        // Ids observed from the other side keep one's own above them, tagged.
        let seen = site.next_id(t + 10);
        hub.observe(seen);
        let next = hub.next_id(t);
        assert!(next > seen && next & 0xff == 0 && site.next_id(t) & 0xff == site_tag);
    }

    #[test]
    fn stanza_ids_round_trip_and_sort_like_numbers() {
        let ids = [
            0,
            1,
            31,
            32,
            id_at(1_700_000_000_000),
            id_at(1_700_000_000_001) + 7,
            i64::MAX,
        ];
        let texts: Vec<String> = ids.iter().map(|&i| encode_id(i)).collect();
        for (id, text) in ids.iter().zip(&texts) {
            assert_eq!(text.len(), 13);
            assert_eq!(decode_id(text), Some(*id));
        }
        assert!(texts.windows(2).all(|w| w[0] < w[1]));
        for bad in [
            "",
            "0000000000001x",
            "000000000000I",
            "zzzzzzzzzzzzz",
            "not-an-id-at!",
        ] {
            assert_eq!(decode_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn preferences_decide_per_contact() {
        let p = ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: vec!["a@x".to_owned()],
            never: vec!["n@x".to_owned()],
        };
        assert_eq!(decision(None, "anyone@x"), Some(true));
        assert_eq!(decision(Some(&p), "a@x"), Some(true));
        assert_eq!(decision(Some(&p), "n@x"), Some(false));
        assert_eq!(decision(Some(&p), "other@x"), None);
        let never = ArchivePrefs {
            default: ArchiveDefault::Never,
            ..p
        };
        assert_eq!(decision(Some(&never), "other@x"), Some(false));
    }

    #[test]
    fn what_is_worth_archiving() {
        let keep = [
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>",
            "<message xmlns='jabber:client'><subject>s</subject></message>",
            "<message xmlns='jabber:client' type='chat'><store xmlns='urn:xmpp:hints'/></message>",
            "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>",
            "<message xmlns='jabber:client' type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
        ];
        let skip = [
            "<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message xmlns='jabber:client' type='headline'><body>news</body></message>",
            "<message xmlns='jabber:client' type='groupchat'><body>room</body></message>",
            "<message xmlns='jabber:client' type='error'><body>x</body></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
            "<presence xmlns='jabber:client'/>",
        ];
        for xml in keep {
            assert!(worth_archiving(&xml.parse().unwrap()), "{xml}");
        }
        for xml in skip {
            assert!(!worth_archiving(&xml.parse().unwrap()), "{xml}");
        }
    }
}
