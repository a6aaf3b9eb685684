//! Copying one store into another, through the [`Store`] trait: what a site that outgrows
//! SQLite does once, with its server stopped, to move to PostgreSQL (`outpost admin
//! migrate-store`).
//!
//! Everything a user or an operator would miss is copied: accounts with their SCRAM
//! verifiers, rosters and pending requests, vCards, block lists, archive preferences,
//! private XML, PEP nodes with their items and subscriptions, API tokens, the offline
//! queues, the rooms with their affiliations, push registrations, upload slots, each
//! link's outbox, and the archive with its ids (they are the stanza-ids clients page by).
//! Roster versions, offline and outbox ids start again in the new store (clients re-fetch
//! a roster whose version they do not know; queue ids are the server's own). Not copied:
//! the received stanza ids kept against duplicates from peers (a day's window, refilled by
//! traffic) and the replication log (a store on PostgreSQL does not replicate).

use std::collections::HashSet;

use crate::{ArchiveEntry, ArchiveQuery, BatchWrite, Quotas, Result, Store, StoreError};

/// Rows read or written at a time.
const PAGE: u32 = 500;

/// What was copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub accounts: u64,
    pub roster_items: u64,
    pub offline: u64,
    pub archive: u64,
    pub pep_items: u64,
    pub rooms: u64,
    pub outbox: u64,
    pub uploads: u64,
}

/// Copies everything in `from` into `to`, which must hold no account yet.
pub async fn copy_store(from: &dyn Store, to: &dyn Store, now_ms: i64) -> Result<CopyReport> {
    if !to.list_accounts().await?.is_empty() {
        return Err(StoreError::Backend(
            "the target store already holds accounts; copy only into an empty one".into(),
        ));
    }
    let mut report = CopyReport::default();
    let accounts = from.list_accounts().await?;
    for user in &accounts {
        copy_account(from, to, user, &mut report).await?;
    }
    copy_rooms(from, to, now_ms, &mut report).await?;
    for (user, registration) in from.push_registrations().await? {
        to.add_push(&user, &registration).await?;
    }
    for slot in from.upload_slots_all().await? {
        to.upload_reserve(&slot, u64::MAX).await?;
        if let Some(at) = slot.completed_ms {
            to.upload_complete(&slot.slot, at).await?;
        }
        report.uploads += 1;
    }
    copy_outbox(from, to, &mut report).await?;
    let rooms: Vec<String> = from.muc_rooms().await?.into_iter().map(|r| r.jid).collect();
    copy_archive(from, to, &accounts, &rooms, &mut report).await?;
    Ok(report)
}

async fn copy_account(
    from: &dyn Store,
    to: &dyn Store,
    user: &str,
    report: &mut CopyReport,
) -> Result<()> {
    let Some(credentials) = from.credentials(user).await? else {
        return Ok(());
    };
    to.create_account(user, &credentials).await?;
    report.accounts += 1;
    for item in from.roster(user).await?.items {
        to.put_roster_item(user, &item).await?;
        report.roster_items += 1;
    }
    for request in from.subscription_requests(user).await? {
        to.put_subscription_request(user, &request).await?;
    }
    if let Some(vcard) = from.vcard(user).await? {
        to.set_vcard(user, &vcard).await?;
    }
    to.block(user, &from.blocklist(user).await?).await?;
    if let Some(prefs) = from.archive_prefs(user).await? {
        to.set_archive_prefs(user, &prefs).await?;
    }
    for (ns, xml) in from.private_xml_all(user).await? {
        to.set_private_xml(user, &ns, &xml).await?;
    }
    for token in from.tokens_of(user).await? {
        to.token_add(&token).await?;
    }
    copy_pep(from, to, user, report).await?;
    for message in from.offline(user, u32::MAX).await? {
        to.push_offline(user, &message.stanza, u32::MAX).await?;
        report.offline += 1;
    }
    Ok(())
}

async fn copy_pep(
    from: &dyn Store,
    to: &dyn Store,
    user: &str,
    report: &mut CopyReport,
) -> Result<()> {
    for (node, config) in from.pep_nodes(user).await? {
        to.pep_configure(user, &node, &config).await?;
        // Newest first: published oldest first, they keep their order.
        for item in from.pep_items(user, &node, None).await?.into_iter().rev() {
            to.pep_publish(user, &node, &item).await?;
            report.pep_items += 1;
        }
    }
    for (node, jid) in from.pep_subscriptions(user).await? {
        to.pep_subscribe(user, &node, &jid).await?;
    }
    Ok(())
}

async fn copy_rooms(
    from: &dyn Store,
    to: &dyn Store,
    now_ms: i64,
    report: &mut CopyReport,
) -> Result<()> {
    for room in from.muc_rooms().await? {
        to.muc_save_room(&room.jid, &room.config, now_ms).await?;
        for (jid, affiliation) in &room.affiliations {
            to.muc_set_affiliation(&room.jid, jid, Some(affiliation), now_ms)
                .await?;
        }
        report.rooms += 1;
    }
    Ok(())
}

async fn copy_outbox(from: &dyn Store, to: &dyn Store, report: &mut CopyReport) -> Result<()> {
    for link in from.outbox_stats().await? {
        let (local, remote) = (&link.local_domain, &link.remote_domain);
        let mut after = None;
        loop {
            let page = from.outbox_peek(local, remote, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for entry in &page {
                to.outbox_push(local, remote, &entry.stanza, entry.queued_at_ms, u32::MAX)
                    .await?;
                report.outbox += 1;
            }
        }
    }
    Ok(())
}

/// Each archive (users' and rooms'), page by page; a message two local users share is
/// written once, with both flags, when the first of its two archives is read.
async fn copy_archive(
    from: &dyn Store,
    to: &dyn Store,
    accounts: &[String],
    rooms: &[String],
    report: &mut CopyReport,
) -> Result<()> {
    let owners: HashSet<&str> = accounts.iter().chain(rooms).map(String::as_str).collect();
    let mut written: HashSet<i64> = HashSet::new();
    for owner in accounts.iter().chain(rooms) {
        let mut after = None;
        loop {
            let q = ArchiveQuery {
                owner,
                with: None,
                after,
                before: None,
                limit: PAGE,
                newest_first: false,
            };
            let page = from.archive_page(&q).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let mut batch = Vec::new();
            for m in page.into_iter().filter(|m| written.insert(m.id)) {
                // The other end's archive holds it too if that end is ours and has it.
                let other = if m.sender == *owner {
                    &m.recipient
                } else {
                    &m.sender
                };
                let both = owners.contains(other.as_str()) && from.archive_has(other, m.id).await?;
                let in_sender = m.sender == *owner || (both && m.sender == *other);
                let in_recipient = m.recipient == *owner || (both && m.recipient == *other);
                batch.push(BatchWrite::Archive(ArchiveEntry {
                    id: m.id,
                    sender: m.sender,
                    recipient: m.recipient,
                    in_sender,
                    in_recipient,
                    stanza: m.stanza,
                }));
            }
            report.archive += batch.len() as u64;
            let quotas = Quotas {
                offline: u32::MAX,
                outbox: u32::MAX,
            };
            for result in to.write_batch(&batch, 0, quotas).await? {
                result?;
            }
        }
    }
    Ok(())
}
