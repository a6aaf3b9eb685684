//! A cheap check that a server archives (XEP-0313): after a run, fetch the last page of one
//! archive and compare its last message with the last one the run sent.
//!
//! Only the last few messages are fetched (`<before/>`, XEP-0059 §2.5), so the check costs
//! one query whatever the archive's size. The total is reported where the server gives it
//! (RSM `<count/>`; Prosody and ejabberd do, Outpost does not).

use std::time::Duration;

use serde::Serialize;

use crate::conn::{Conn, Result, Target, XmppError};
use crate::frame::{self, FrameKind};
use crate::scenarios::parse_body;

pub const MAM_NS: &str = "urn:xmpp:mam:2";
const RSM_NS: &str = "http://jabber.org/protocol/rsm";

/// One archived message: who sent it and the sequence number in its body.
#[derive(Clone, Debug, Serialize)]
pub struct Archived {
    pub from: String,
    pub seq: Option<u64>,
}

/// The last page of an archive.
#[derive(Debug, Default)]
pub struct Page {
    /// Oldest first.
    pub items: Vec<Archived>,
    /// The archive's total, if the server says.
    pub count: Option<u64>,
}

/// What the check found.
#[derive(Debug, Serialize)]
pub struct MamCheck {
    /// Whose archive: a user's bare JID, or a room's.
    pub archive: String,
    /// Messages in the archive (RSM count), where the server tells.
    pub count: Option<u64>,
    /// Messages on the last page (at most 5).
    pub page: usize,
    pub last: Option<Archived>,
    /// The last message the run sent (its sender and number).
    pub expected_last: Option<Archived>,
    /// The archive's last message is the run's last one.
    pub ok: bool,
    /// Queries made (the check retries twice, a second apart, for servers that archive
    /// after delivering).
    pub attempts: u32,
    pub error: Option<String>,
}

/// The forwarded message inside a MAM result (XEP-0313 §4.2).
fn archived(result: &[u8]) -> Option<Archived> {
    let at = memchr::memmem::find(result, b"<forwarded")?;
    let inner = &result[at..];
    let m = memchr::memmem::find(inner, b"<message")?;
    let msg = &inner[m..];
    let from = frame::attr(msg, "from").unwrap_or_default();
    Some(Archived {
        from: String::from_utf8_lossy(from).into_owned(),
        seq: parse_body(msg).map(|(seq, _)| seq),
    })
}

/// The `queryid` of the MAM result a message carries.
fn result_of(m: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(m, b"<result")?;
    frame::attr(&m[at..], "queryid")
}

/// Queries the last `max` messages of the archive at `to` (a room; `None`: the user's own).
pub async fn last_page(c: &mut Conn, t: &Target, to: Option<&str>, max: usize) -> Result<Page> {
    let n = t.unique();
    let (id, qid) = (format!("mam{n}"), format!("q{n}"));
    let to = to.map(|j| format!(" to='{j}'")).unwrap_or_default();
    c.send(
        format!(
            "<iq type='set' id='{id}'{to}><query xmlns='{MAM_NS}' queryid='{qid}'>\
             <set xmlns='{RSM_NS}'><max>{max}</max><before/></set></query></iq>"
        )
        .as_bytes(),
    )
    .await?;
    let mut page = Page::default();
    let deadline = tokio::time::Instant::now() + t.step_timeout;
    read_page(c, &id, &qid, deadline, &mut page).await?;
    Ok(page)
}

async fn read_page(
    c: &mut Conn,
    id: &str,
    qid: &str,
    deadline: tokio::time::Instant,
    page: &mut Page,
) -> Result<()> {
    loop {
        while let Some(f) = c.framer.next_frame() {
            if f.kind != FrameKind::Element {
                continue;
            }
            let s = c.framer.slice(&f);
            match frame::name(s) {
                b"message" if result_of(s) == Some(qid.as_bytes()) => {
                    page.items.extend(archived(s));
                }
                b"iq" if frame::attr(s, "id") == Some(id.as_bytes()) => {
                    if frame::is_error(s) {
                        return Err(XmppError(format!(
                            "archive query refused: {}",
                            String::from_utf8_lossy(s)
                        )));
                    }
                    page.count = frame::child_text(s, "count")
                        .and_then(|b| std::str::from_utf8(b).ok()?.trim().parse().ok());
                    return Ok(());
                }
                _ => {}
            }
        }
        let more = tokio::time::timeout_at(deadline, c.fill())
            .await
            .map_err(|_| XmppError("timed out waiting for the archive".into()))??;
        if !more {
            return Err(XmppError(
                "connection closed during the archive query".into(),
            ));
        }
    }
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Whether `last` is `expected`: same number, and the same sender (bare JIDs for users; the
/// full room JID `room/nick` for rooms, as `expected` gives it).
fn same(last: &Archived, expected: &Archived) -> bool {
    let from_ok = if expected.from.contains('/') {
        last.from == expected.from
    } else {
        bare(&last.from) == expected.from
    };
    from_ok && last.seq == expected.seq
}

/// After the throughput scenario: the first receiver's archive ends with the first sender's
/// last message.
pub async fn check_first_pair(
    t: &Target,
    prefix: &str,
    start: usize,
    pairs: usize,
    sent: u64,
) -> MamCheck {
    let expected = sent.checked_sub(1).map(|seq| Archived {
        from: t.jid(&format!("{prefix}{start}")),
        seq: Some(seq),
    });
    check(t, &format!("{prefix}{}", start + pairs), None, expected).await
}

/// Logs `user` in, reads the last page of the archive at `to` (its own when `None`) until
/// its last message is `expected` (three tries, a second apart), and reports.
pub async fn check(
    t: &Target,
    user: &str,
    to: Option<&str>,
    expected: Option<Archived>,
) -> MamCheck {
    let mut report = MamCheck {
        archive: to.map_or_else(|| t.jid(user), str::to_owned),
        count: None,
        page: 0,
        last: None,
        expected_last: expected,
        ok: false,
        attempts: 0,
        error: None,
    };
    let mut c = match Conn::login(t, user, t.login_mech, false).await {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(format!("login: {e}"));
            return report;
        }
    };
    check_on(&mut c, t, to, &mut report).await;
    c.close().await;
    report
}

/// [`check`] on a connection that is already logged in.
pub async fn check_on(c: &mut Conn, t: &Target, to: Option<&str>, report: &mut MamCheck) {
    for attempt in 1..=3 {
        report.attempts = attempt;
        match last_page(c, t, to, 5).await {
            Ok(page) => {
                report.count = page.count;
                report.page = page.items.len();
                report.last = page.items.last().cloned();
                report.error = None;
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        report.ok = match (&report.last, &report.expected_last) {
            (Some(l), Some(e)) => same(l, e),
            (Some(_), None) => true,
            _ => false,
        };
        if report.ok {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_forwarded_message() {
        let m = b"<message to='u2@b/x' from='u2@b'><result xmlns='urn:xmpp:mam:2' queryid='q1' id='7'>\
            <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='x'/>\
            <message xmlns='jabber:client' from='u1@b/bench' to='u2@b' type='chat'><body>41 99</body></message>\
            </forwarded></result></message>";
        assert_eq!(result_of(m), Some(&b"q1"[..]));
        let a = archived(m).expect("forwarded");
        assert_eq!(a.from, "u1@b/bench");
        assert_eq!(a.seq, Some(41));
        let want = Archived {
            from: "u1@b".into(),
            seq: Some(41),
        };
        assert!(same(&a, &want));
        let room = Archived {
            from: "r@c/n3".into(),
            seq: Some(41),
        };
        assert!(!same(&a, &room));
    }
}
