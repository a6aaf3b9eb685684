//! The in-memory backend: everything in maps behind one mutex, gone when the process ends.
//! Used by tests and by ephemeral runs; it follows the same contract as the durable
//! backends, checked by the shared battery.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::{
    ApiToken, ArchiveEntry, ArchivePrefs, ArchiveQuery, ArchivedMessage, BareJid, BatchWrite,
    Credentials, NodeConfig, OfflineMessage, OutboxEntry, OutboxStats, PepItem, PushRegistration,
    Quotas, Result, Roster, RosterItem, Store, StoreError, StoredRoom, SubscriptionRequest,
    UploadSlot,
};

/// A [`Store`] that keeps everything in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Everything a user owns hangs off their account, so removing the account removes it all.
    accounts: BTreeMap<String, Account>,
    /// The last offline id handed out, for any user. Never reset, so ids are never reused.
    last_offline_id: i64,
    /// Outbox queues, by link. A link is dropped when its queue is empty and it never
    /// delivered, so that it leaves no trace in [`Store::outbox_stats`].
    outbox: BTreeMap<Link, OutboxLink>,
    /// The last outbox id handed out, on any link. Never reset, like `last_offline_id`.
    last_outbox_id: i64,
    /// When each (origin, stanza id) pair was last seen.
    seen: BTreeMap<(String, String), i64>,
    /// The archive, by id: one entry per message, shared by both ends' archives.
    archive: BTreeMap<i64, ArchiveEntry>,
    /// Rooms by JID: configuration and affiliations, each by key.
    rooms: BTreeMap<String, (Pairs, Pairs)>,
    /// HTTP upload slots by slot id (not the account's: they outlive it).
    uploads: BTreeMap<String, UploadSlot>,
}

impl Inner {
    fn push_offline(&mut self, user: &BareJid, stanza: &str, quota: u32) -> Result<i64> {
        let next_id = self.last_offline_id + 1;
        let account = self
            .accounts
            .get_mut(user)
            .ok_or(StoreError::NoSuchAccount)?;
        if account.offline.len() >= quota as usize {
            return Err(StoreError::QuotaExceeded { quota });
        }
        account.offline.push_back(OfflineMessage {
            id: next_id,
            stanza: stanza.to_owned(),
        });
        self.last_offline_id = next_id;
        Ok(next_id)
    }

    fn outbox_push(
        &mut self,
        local: &str,
        remote: &str,
        stanza: &str,
        now_ms: i64,
        quota: u32,
    ) -> Result<i64> {
        let key = Link::new(local, remote);
        let queued = self.outbox.get(&key).map_or(0, |link| link.queue.len());
        if queued >= quota as usize {
            return Err(StoreError::QuotaExceeded { quota });
        }
        let id = self.last_outbox_id + 1;
        self.outbox
            .entry(key)
            .or_default()
            .queue
            .push_back(OutboxEntry {
                id,
                local_domain: local.to_owned(),
                remote_domain: remote.to_owned(),
                stanza: stanza.to_owned(),
                queued_at_ms: now_ms,
            });
        self.last_outbox_id = id;
        Ok(id)
    }

    /// Takes `owner`'s end out of every message it archived (see
    /// [`Store::archive_clear`]).
    fn archive_clear(&mut self, owner: &str) -> u64 {
        let mut removed = 0;
        self.archive.retain(|_, e| {
            let mine_s = e.in_sender && e.sender == owner;
            let mine_r = e.in_recipient && e.recipient == owner;
            if !mine_s && !mine_r {
                return true;
            }
            removed += 1;
            e.in_sender &= !mine_s;
            e.in_recipient &= !mine_r;
            e.in_sender || e.in_recipient
        });
        removed
    }
}

/// Whether `e` is in `owner`'s archive, exchanged with `with` if given.
fn in_archive(e: &ArchiveEntry, owner: &str, with: Option<&str>) -> bool {
    let as_sender = e.in_sender && e.sender == owner && with.is_none_or(|w| e.recipient == w);
    let as_recipient = e.in_recipient && e.recipient == owner && with.is_none_or(|w| e.sender == w);
    as_sender || as_recipient
}

/// Key-value pairs, sorted by key.
type Pairs = BTreeMap<String, String>;

/// The two ends of a server-to-server stream. Remote first, so that iterating the map
/// gives the order [`Store::outbox_stats`] promises.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Link {
    remote: String,
    local: String,
}

impl Link {
    fn new(local: &str, remote: &str) -> Self {
        Link {
            remote: remote.to_owned(),
            local: local.to_owned(),
        }
    }
}

#[derive(Debug, Default)]
struct OutboxLink {
    /// In id order.
    queue: VecDeque<OutboxEntry>,
    last_delivery_ms: Option<i64>,
}

impl OutboxLink {
    fn is_unused(&self) -> bool {
        self.queue.is_empty() && self.last_delivery_ms.is_none()
    }
}

#[derive(Debug)]
struct Account {
    creds: Credentials,
    roster_version: u64,
    roster: BTreeMap<String, RosterItem>,
    /// In arrival order; a replaced request keeps its place.
    requests: Vec<SubscriptionRequest>,
    offline: VecDeque<OfflineMessage>,
    vcard: Option<String>,
    blocklist: BTreeSet<String>,
    archive_prefs: Option<ArchivePrefs>,
    /// Personal eventing nodes by name; items oldest first.
    pep: BTreeMap<String, (NodeConfig, VecDeque<PepItem>)>,
    /// Explicit subscriptions as (node, subscriber).
    pep_subscriptions: BTreeSet<(String, String)>,
    private_xml: BTreeMap<String, String>,
    /// Push registrations by (service, node).
    pushes: BTreeMap<(String, String), String>,
    /// HTTP API tokens by id.
    tokens: BTreeMap<String, ApiToken>,
}

impl Account {
    fn new(creds: Credentials) -> Self {
        Account {
            creds,
            roster_version: 0,
            roster: BTreeMap::new(),
            requests: Vec::new(),
            offline: VecDeque::new(),
            vcard: None,
            blocklist: BTreeSet::new(),
            archive_prefs: None,
            pep: BTreeMap::new(),
            tokens: BTreeMap::new(),
            pep_subscriptions: BTreeSet::new(),
            private_xml: BTreeMap::new(),
            pushes: BTreeMap::new(),
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No critical section below can panic half-way through an update, so a poisoned lock
        // (a panic elsewhere while it was held) still guards consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the user's account, or fails with `NoSuchAccount`: the rule for writes.
    fn write<T>(&self, user: &BareJid, f: impl FnOnce(&mut Account) -> Result<T>) -> Result<T> {
        match self.lock().accounts.get_mut(user) {
            Some(account) => f(account),
            None => Err(StoreError::NoSuchAccount),
        }
    }

    /// Runs `f` on the user's account, or returns the default: the rule for reads.
    fn read<T: Default>(&self, user: &BareJid, f: impl FnOnce(&Account) -> T) -> T {
        self.lock().accounts.get(user).map(f).unwrap_or_default()
    }
}

/// Groups are stored sorted and without duplicates, as [`RosterItem::groups`] promises.
fn normalised(item: &RosterItem) -> RosterItem {
    let mut item = item.clone();
    item.groups.sort();
    item.groups.dedup();
    item
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_account(&self, user: &BareJid, creds: &Credentials) -> Result<()> {
        let mut inner = self.lock();
        if inner.accounts.contains_key(user) {
            return Err(StoreError::AccountExists);
        }
        inner
            .accounts
            .insert(user.to_owned(), Account::new(creds.clone()));
        Ok(())
    }

    async fn credentials(&self, user: &BareJid) -> Result<Option<Credentials>> {
        Ok(self.read(user, |a| Some(a.creds.clone())))
    }

    async fn set_credentials(&self, user: &BareJid, creds: &Credentials) -> Result<()> {
        self.write(user, |a| {
            a.creds = creds.clone();
            a.tokens.clear();
            Ok(())
        })
    }

    async fn remove_account(&self, user: &BareJid) -> Result<()> {
        let mut inner = self.lock();
        match inner.accounts.remove(user) {
            Some(_) => {
                inner.archive_clear(user);
                Ok(())
            }
            None => Err(StoreError::NoSuchAccount),
        }
    }

    async fn list_accounts(&self) -> Result<Vec<String>> {
        Ok(self.lock().accounts.keys().cloned().collect())
    }

    async fn account_exists(&self, user: &BareJid) -> Result<bool> {
        Ok(self.lock().accounts.contains_key(user))
    }

    async fn roster(&self, user: &BareJid) -> Result<Roster> {
        Ok(self.read(user, |a| Roster {
            version: a.roster_version,
            items: a.roster.values().cloned().collect(),
        }))
    }

    async fn roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>> {
        Ok(self.read(user, |a| a.roster.get(contact).cloned()))
    }

    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64> {
        self.write(user, |a| {
            a.roster.insert(item.jid.clone(), normalised(item));
            a.roster_version += 1;
            Ok(a.roster_version)
        })
    }

    async fn remove_roster_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>> {
        self.write(user, |a| {
            Ok(a.roster.remove(contact).map(|_| {
                a.roster_version += 1;
                a.roster_version
            }))
        })
    }

    async fn put_subscription_request(
        &self,
        user: &BareJid,
        req: &SubscriptionRequest,
    ) -> Result<()> {
        self.write(user, |a| {
            match a.requests.iter_mut().find(|r| r.from == req.from) {
                Some(existing) => existing.stanza.clone_from(&req.stanza),
                None => a.requests.push(req.clone()),
            }
            Ok(())
        })
    }

    async fn remove_subscription_request(&self, user: &BareJid, from: &BareJid) -> Result<()> {
        self.write(user, |a| {
            a.requests.retain(|r| r.from != from);
            Ok(())
        })
    }

    async fn subscription_requests(&self, user: &BareJid) -> Result<Vec<SubscriptionRequest>> {
        Ok(self.read(user, |a| a.requests.clone()))
    }

    async fn push_offline(&self, user: &BareJid, stanza: &str, quota: u32) -> Result<i64> {
        self.lock().push_offline(user, stanza, quota)
    }

    async fn offline(&self, user: &BareJid, limit: u32) -> Result<Vec<OfflineMessage>> {
        Ok(self.read(user, |a| {
            a.offline.iter().take(limit as usize).cloned().collect()
        }))
    }

    async fn delete_offline(&self, user: &BareJid, up_to: i64) -> Result<()> {
        self.write(user, |a| {
            // The queue is in id order, so the messages to delete are a prefix of it.
            while a.offline.front().is_some_and(|m| m.id <= up_to) {
                a.offline.pop_front();
            }
            Ok(())
        })
    }

    async fn count_offline(&self, user: &BareJid) -> Result<u64> {
        Ok(self.read(user, |a| a.offline.len() as u64))
    }

    async fn archive_page(&self, q: &ArchiveQuery<'_>) -> Result<Vec<ArchivedMessage>> {
        let inner = self.lock();
        let lo = q
            .after
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let hi = q
            .before
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let range = inner
            .archive
            .range((lo, hi))
            .map(|(_, e)| e)
            .filter(|e| in_archive(e, q.owner, q.with));
        let found: Box<dyn Iterator<Item = &ArchiveEntry>> = if q.newest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        Ok(found
            .take(q.limit as usize)
            .map(|e| ArchivedMessage {
                id: e.id,
                sender: e.sender.clone(),
                recipient: e.recipient.clone(),
                stanza: e.stanza.clone(),
            })
            .collect())
    }

    async fn archive_has(&self, owner: &str, id: i64) -> Result<bool> {
        Ok(self
            .lock()
            .archive
            .get(&id)
            .is_some_and(|e| in_archive(e, owner, None)))
    }

    async fn archive_bounds(&self, owner: &str) -> Result<Option<(i64, i64)>> {
        let inner = self.lock();
        let mut ids = inner
            .archive
            .values()
            .filter(|e| in_archive(e, owner, None))
            .map(|e| e.id);
        let first = ids.next();
        Ok(first.map(|f| (f, ids.next_back().unwrap_or(f))))
    }

    async fn archive_last_id(&self) -> Result<i64> {
        Ok(self.lock().archive.keys().next_back().copied().unwrap_or(0))
    }

    async fn archive_clear(&self, owner: &str) -> Result<u64> {
        Ok(self.lock().archive_clear(owner))
    }

    async fn archive_expire(&self, before_id: i64, limit: u32) -> Result<u64> {
        let mut inner = self.lock();
        let old: Vec<i64> = inner
            .archive
            .range(..before_id)
            .take(limit as usize)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            inner.archive.remove(id);
        }
        Ok(old.len() as u64)
    }

    async fn archive_prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>> {
        Ok(self.read(user, |a| a.archive_prefs.clone()))
    }

    async fn set_archive_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        self.write(user, |a| {
            let mut prefs = prefs.clone();
            // A JID in both lists is never archived, as in the SQLite backend.
            prefs.always.retain(|j| !prefs.never.contains(j));
            for list in [&mut prefs.always, &mut prefs.never] {
                list.sort();
                list.dedup();
            }
            a.archive_prefs = Some(prefs);
            Ok(())
        })
    }

    async fn all_archive_prefs(&self) -> Result<Vec<(String, ArchivePrefs)>> {
        Ok(self
            .lock()
            .accounts
            .iter()
            .filter_map(|(jid, a)| Some((jid.clone(), a.archive_prefs.clone()?)))
            .collect())
    }

    async fn write_batch(
        &self,
        writes: &[BatchWrite],
        now_ms: i64,
        quotas: Quotas,
    ) -> Result<Vec<Result<i64>>> {
        let mut inner = self.lock();
        Ok(writes
            .iter()
            .map(|w| match w {
                BatchWrite::Archive(e) => {
                    inner.archive.insert(e.id, e.clone());
                    Ok(e.id)
                }
                BatchWrite::Offline { user, stanza } => {
                    inner.push_offline(user, stanza, quotas.offline)
                }
                BatchWrite::Outbox(e) => {
                    inner.outbox_push(&e.local, &e.remote, &e.stanza, now_ms, quotas.outbox)
                }
                BatchWrite::Seen { origin, id } => {
                    let at = inner
                        .seen
                        .entry((origin.clone(), id.clone()))
                        .or_insert(now_ms);
                    *at = (*at).max(now_ms);
                    Ok(0)
                }
            })
            .collect())
    }

    async fn pep_node(&self, owner: &BareJid, node: &str) -> Result<Option<NodeConfig>> {
        Ok(self.read(owner, |a| a.pep.get(node).map(|(c, _)| c.clone())))
    }

    async fn pep_nodes(&self, owner: &BareJid) -> Result<Vec<(String, NodeConfig)>> {
        Ok(self.read(owner, |a| {
            a.pep
                .iter()
                .map(|(n, (c, _))| (n.clone(), c.clone()))
                .collect()
        }))
    }

    async fn pep_configure(&self, owner: &BareJid, node: &str, config: &NodeConfig) -> Result<()> {
        self.write(owner, |a| {
            let mut config = config.clone();
            config.max_items = config.max_items.max(1);
            let entry = a
                .pep
                .entry(node.to_owned())
                .or_insert_with(|| (config.clone(), VecDeque::new()));
            entry.0 = config;
            while entry.1.len() > entry.0.max_items as usize {
                entry.1.pop_front();
            }
            Ok(())
        })
    }

    async fn pep_delete_node(&self, owner: &BareJid, node: &str) -> Result<bool> {
        Ok(self.lock().accounts.get_mut(owner).is_some_and(|a| {
            a.pep_subscriptions.retain(|(n, _)| n != node);
            a.pep.remove(node).is_some()
        }))
    }

    async fn pep_publish(&self, owner: &BareJid, node: &str, item: &PepItem) -> Result<()> {
        let mut inner = self.lock();
        let (config, items) = inner
            .accounts
            .get_mut(owner)
            .and_then(|a| a.pep.get_mut(node))
            .ok_or(StoreError::NoSuchNode)?;
        items.retain(|i| i.id != item.id);
        items.push_back(item.clone());
        while items.len() > config.max_items as usize {
            items.pop_front();
        }
        Ok(())
    }

    async fn pep_items(
        &self,
        owner: &BareJid,
        node: &str,
        limit: Option<u32>,
    ) -> Result<Vec<PepItem>> {
        Ok(self.read(owner, |a| {
            a.pep
                .get(node)
                .map(|(_, items)| {
                    items
                        .iter()
                        .rev()
                        .take(limit.map_or(usize::MAX, |l| l as usize))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn pep_item(&self, owner: &BareJid, node: &str, id: &str) -> Result<Option<PepItem>> {
        Ok(self.read(owner, |a| {
            a.pep
                .get(node)
                .and_then(|(_, items)| items.iter().find(|i| i.id == id).cloned())
        }))
    }

    async fn pep_retract(&self, owner: &BareJid, node: &str, id: &str) -> Result<bool> {
        let mut inner = self.lock();
        let Some((_, items)) = inner
            .accounts
            .get_mut(owner)
            .and_then(|a| a.pep.get_mut(node))
        else {
            return Ok(false);
        };
        let before = items.len();
        items.retain(|i| i.id != id);
        Ok(items.len() < before)
    }

    async fn pep_purge(&self, owner: &BareJid, node: &str) -> Result<()> {
        if let Some((_, items)) = self
            .lock()
            .accounts
            .get_mut(owner)
            .and_then(|a| a.pep.get_mut(node))
        {
            items.clear();
        }
        Ok(())
    }

    async fn pep_subscribe(&self, owner: &BareJid, node: &str, jid: &str) -> Result<()> {
        let mut inner = self.lock();
        let account = (inner.accounts.get_mut(owner))
            .filter(|a| a.pep.contains_key(node))
            .ok_or(StoreError::NoSuchNode)?;
        account
            .pep_subscriptions
            .insert((node.to_owned(), jid.to_owned()));
        Ok(())
    }

    async fn pep_unsubscribe(&self, owner: &BareJid, node: &str, jid: &str) -> Result<bool> {
        let key = (node.to_owned(), jid.to_owned());
        Ok((self.lock().accounts.get_mut(owner)).is_some_and(|a| a.pep_subscriptions.remove(&key)))
    }

    async fn pep_subscriptions(&self, owner: &BareJid) -> Result<Vec<(String, String)>> {
        Ok(self.read(owner, |a| a.pep_subscriptions.iter().cloned().collect()))
    }

    async fn private_xml(&self, owner: &BareJid, ns: &str) -> Result<Option<String>> {
        Ok(self.read(owner, |a| a.private_xml.get(ns).cloned()))
    }

    async fn private_xml_all(&self, owner: &BareJid) -> Result<Vec<(String, String)>> {
        Ok(self.read(owner, |a| {
            (a.private_xml.iter())
                .map(|(ns, xml)| (ns.clone(), xml.clone()))
                .collect()
        }))
    }

    async fn set_private_xml(&self, owner: &BareJid, ns: &str, xml: &str) -> Result<()> {
        self.write(owner, |a| {
            a.private_xml.insert(ns.to_owned(), xml.to_owned());
            Ok(())
        })
    }

    async fn muc_rooms(&self) -> Result<Vec<StoredRoom>> {
        Ok(self
            .lock()
            .rooms
            .iter()
            .map(|(jid, (config, affiliations))| StoredRoom {
                jid: jid.clone(),
                config: config.clone().into_iter().collect(),
                affiliations: affiliations.clone().into_iter().collect(),
            })
            .collect())
    }

    async fn muc_save_room(
        &self,
        room: &str,
        config: &[(String, String)],
        _now_ms: i64,
    ) -> Result<()> {
        let mut inner = self.lock();
        let entry = inner.rooms.entry(room.to_owned()).or_default();
        entry.0 = config.iter().cloned().collect();
        Ok(())
    }

    async fn muc_delete_room(&self, room: &str) -> Result<()> {
        self.lock().rooms.remove(room);
        Ok(())
    }

    async fn muc_set_affiliation(
        &self,
        room: &str,
        jid: &str,
        affiliation: Option<&str>,
        _now_ms: i64,
    ) -> Result<()> {
        let mut inner = self.lock();
        let entry = inner.rooms.entry(room.to_owned()).or_default();
        match affiliation {
            Some(a) => entry.1.insert(jid.to_owned(), a.to_owned()),
            None => entry.1.remove(jid),
        };
        Ok(())
    }

    async fn token_add(&self, token: &ApiToken) -> Result<()> {
        self.write(&token.owner, |a| {
            a.tokens.insert(token.id.clone(), token.clone());
            Ok(())
        })
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<ApiToken>> {
        let inner = self.lock();
        let mut all = inner.accounts.values().flat_map(|a| a.tokens.values());
        Ok(all.find(|t| t.hash == hash).cloned())
    }

    async fn tokens_of(&self, owner: &str) -> Result<Vec<ApiToken>> {
        let mut tokens = self.read(owner, |a| a.tokens.values().cloned().collect::<Vec<_>>());
        tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(tokens)
    }

    async fn token_remove(&self, owner: &str, id: &str) -> Result<bool> {
        let mut inner = self.lock();
        let account = inner.accounts.get_mut(owner);
        Ok(account.is_some_and(|a| a.tokens.remove(id).is_some()))
    }

    async fn tokens_remove_all(&self, owner: &str) -> Result<u64> {
        let mut inner = self.lock();
        let account = inner.accounts.get_mut(owner);
        Ok(account.map_or(0, |a| std::mem::take(&mut a.tokens).len() as u64))
    }

    async fn tokens_expire(&self, now_ms: i64) -> Result<u64> {
        let mut inner = self.lock();
        let mut gone = 0;
        for account in inner.accounts.values_mut() {
            let before = account.tokens.len();
            account.tokens.retain(|_, t| t.expires_ms >= now_ms);
            gone += (before - account.tokens.len()) as u64;
        }
        Ok(gone)
    }

    async fn upload_reserve(&self, slot: &UploadSlot, quota: u64) -> Result<()> {
        let mut inner = self.lock();
        let used: u64 = (inner.uploads.values())
            .filter(|u| u.owner == slot.owner)
            .map(|u| u.size)
            .sum();
        if used.saturating_add(slot.size) > quota {
            return Err(StoreError::UploadQuotaExceeded { quota });
        }
        inner.uploads.insert(slot.slot.clone(), slot.clone());
        Ok(())
    }

    async fn upload_slot(&self, slot: &str) -> Result<Option<UploadSlot>> {
        Ok(self.lock().uploads.get(slot).cloned())
    }

    async fn upload_slots_all(&self) -> Result<Vec<UploadSlot>> {
        Ok(self.lock().uploads.values().cloned().collect())
    }

    async fn upload_complete(&self, slot: &str, now_ms: i64) -> Result<bool> {
        let mut inner = self.lock();
        match inner.uploads.get_mut(slot) {
            Some(u) if u.completed_ms.is_none() => {
                u.completed_ms = Some(now_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn uploads_expired(
        &self,
        pending_before_ms: i64,
        completed_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<UploadSlot>> {
        let mut due: Vec<UploadSlot> = (self.lock().uploads.values())
            .filter(|u| match u.completed_ms {
                None => u.created_ms < pending_before_ms,
                Some(_) => u.created_ms < completed_before_ms,
            })
            .cloned()
            .collect();
        due.sort_by_key(|u| u.created_ms);
        due.truncate(limit as usize);
        Ok(due)
    }

    async fn upload_remove(&self, slot: &str) -> Result<bool> {
        Ok(self.lock().uploads.remove(slot).is_some())
    }

    async fn push_registrations(&self) -> Result<Vec<(String, PushRegistration)>> {
        Ok(self
            .lock()
            .accounts
            .iter()
            .flat_map(|(owner, a)| {
                a.pushes.iter().map(|((service, node), options)| {
                    let reg = PushRegistration {
                        service: service.clone(),
                        node: node.clone(),
                        options: options.clone(),
                    };
                    (owner.clone(), reg)
                })
            })
            .collect())
    }

    async fn add_push(&self, user: &BareJid, reg: &PushRegistration) -> Result<()> {
        self.write(user, |a| {
            a.pushes
                .insert((reg.service.clone(), reg.node.clone()), reg.options.clone());
            Ok(())
        })
    }

    async fn remove_push(&self, user: &BareJid, service: &str, node: Option<&str>) -> Result<u64> {
        let mut inner = self.lock();
        let Some(a) = inner.accounts.get_mut(user) else {
            return Ok(0);
        };
        let before = a.pushes.len();
        a.pushes
            .retain(|(s, n), _| s != service || node.is_some_and(|node| node != n));
        Ok((before - a.pushes.len()) as u64)
    }

    async fn vcard(&self, user: &BareJid) -> Result<Option<String>> {
        Ok(self.read(user, |a| a.vcard.clone()))
    }

    async fn set_vcard(&self, user: &BareJid, vcard: &str) -> Result<()> {
        self.write(user, |a| {
            a.vcard = Some(vcard.to_owned());
            Ok(())
        })
    }

    async fn blocklist(&self, user: &BareJid) -> Result<Vec<String>> {
        Ok(self.read(user, |a| a.blocklist.iter().cloned().collect()))
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        self.write(user, |a| {
            a.blocklist.extend(jids.iter().cloned());
            Ok(())
        })
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        self.write(user, |a| {
            if jids.is_empty() {
                a.blocklist.clear();
            } else {
                for jid in jids {
                    a.blocklist.remove(jid);
                }
            }
            Ok(())
        })
    }

    async fn outbox_push(
        &self,
        local: &str,
        remote: &str,
        stanza: &str,
        now_ms: i64,
        quota: u32,
    ) -> Result<i64> {
        self.lock()
            .outbox_push(local, remote, stanza, now_ms, quota)
    }

    async fn outbox_peek(
        &self,
        local: &str,
        remote: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        let inner = self.lock();
        let Some(link) = inner.outbox.get(&Link::new(local, remote)) else {
            return Ok(Vec::new());
        };
        Ok(link
            .queue
            .iter()
            .filter(|e| after_id.is_none_or(|after| e.id > after))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn outbox_ack(
        &self,
        local: &str,
        remote: &str,
        up_to_id: i64,
        now_ms: i64,
    ) -> Result<u64> {
        let mut inner = self.lock();
        let Some(link) = inner.outbox.get_mut(&Link::new(local, remote)) else {
            return Ok(0);
        };
        // The queue is in id order, so the acknowledged stanzas are a prefix of it.
        let mut removed = 0;
        while link.queue.front().is_some_and(|e| e.id <= up_to_id) {
            link.queue.pop_front();
            removed += 1;
        }
        if removed > 0 {
            link.last_delivery_ms = Some(link.last_delivery_ms.map_or(now_ms, |t| t.max(now_ms)));
        }
        Ok(removed)
    }

    async fn outbox_expire(
        &self,
        now_ms: i64,
        lifetime_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        let cutoff = now_ms.saturating_sub(lifetime_ms);
        let mut inner = self.lock();
        let mut ids: Vec<i64> = inner
            .outbox
            .values()
            .flat_map(|link| link.queue.iter())
            .filter(|e| e.queued_at_ms <= cutoff)
            .map(|e| e.id)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit as usize);
        let ids: BTreeSet<i64> = ids.into_iter().collect();
        let mut expired = Vec::with_capacity(ids.len());
        for link in inner.outbox.values_mut() {
            let (gone, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut link.queue)
                .into_iter()
                .partition(|e| ids.contains(&e.id));
            link.queue = kept;
            expired.extend(gone);
        }
        inner.outbox.retain(|_, link| !link.is_unused());
        expired.sort_unstable_by_key(|e| e.id);
        Ok(expired)
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>> {
        Ok(self
            .lock()
            .outbox
            .iter()
            .filter(|(_, link)| !link.is_unused())
            .map(|(key, link)| OutboxStats {
                local_domain: key.local.clone(),
                remote_domain: key.remote.clone(),
                queued: link.queue.len() as u64,
                // Ids follow the order of the calls, not the clock, which can go back.
                oldest_queued_at_ms: link.queue.iter().map(|e| e.queued_at_ms).min(),
                last_delivery_ms: link.last_delivery_ms,
            })
            .collect())
    }

    async fn seen_stanza_id(&self, origin: &str, id: &str, now_ms: i64) -> Result<bool> {
        let mut inner = self.lock();
        match inner.seen.get_mut(&(origin.to_owned(), id.to_owned())) {
            Some(seen_at) => {
                *seen_at = (*seen_at).max(now_ms);
                Ok(true)
            }
            None => {
                inner
                    .seen
                    .insert((origin.to_owned(), id.to_owned()), now_ms);
                Ok(false)
            }
        }
    }

    async fn stanza_id_seen(&self, origin: &str, id: &str) -> Result<bool> {
        let inner = self.lock();
        Ok(inner.seen.contains_key(&(origin.to_owned(), id.to_owned())))
    }

    async fn prune_seen(&self, older_than_ms: i64) -> Result<u64> {
        let mut inner = self.lock();
        let before = inner.seen.len();
        inner.seen.retain(|_, seen_at| *seen_at >= older_than_ms);
        Ok((before - inner.seen.len()) as u64)
    }

    async fn backup(&self, _to: &std::path::Path) -> Result<()> {
        Err(StoreError::Unsupported("backup"))
    }

    async fn close(&self) {}
}
