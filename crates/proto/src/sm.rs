//! Stream management for client streams (XEP-0198), the counters and the queue, sans IO.
//!
//! [`StreamManagement`] is the state of one managed stream: how many stanzas the server has
//! handled from the client (`h` in the server's `<a/>`), how many it sent, how many of
//! those the client acknowledged, and the ones still unacknowledged, as they were written,
//! with the time they were queued. It outlives a connection: when the TCP connection dies,
//! the server takes it from the dead stream ([`crate::c2s::C2sStream::take_sm`]) and gives it
//! to the stream that resumes ([`crate::c2s::C2sStream::sm_resumed`]), or hands the
//! unacknowledged stanzas on (to the offline store) when nobody resumes in time.
//!
//! Counters are 32-bit and wrap (XEP-0198 §4): every comparison is a wrapping difference.

use std::collections::VecDeque;

/// A stanza sent on a managed stream and not yet acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unacked {
    /// The stanza exactly as it was written.
    pub xml: Box<str>,
    /// When it was queued, in Unix milliseconds (the clock the server last gave).
    pub queued_ms: i64,
}

/// What went wrong with an acknowledgement from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckError {
    /// The client acknowledged more stanzas than were sent (XEP-0198 §4,
    /// `<handled-count-too-high/>`).
    TooHigh { h: u32, sent: u32 },
}

/// The state of a managed stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamManagement {
    /// Stanzas handled from the client: what the server's `<a h/>` says.
    inbound: u32,
    /// Stanzas sent to the client.
    sent: u32,
    /// The client's last `h`.
    acked: u32,
    unacked: VecDeque<Unacked>,
    /// The resumption id (XEP-0198 §5), when resumption was granted.
    id: Option<String>,
    /// Seconds a dead stream may be resumed within.
    max: u32,
    /// An `<r/>` went out and no `<a/>` came back yet.
    requested: bool,
}

/// A managed stream's state taken apart, to move it to another server process (a node of
/// the same cluster) and build it again there with [`StreamManagement::from_parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmParts {
    pub inbound: u32,
    pub sent: u32,
    pub acked: u32,
    pub unacked: Vec<Unacked>,
    pub id: Option<String>,
    pub max: u32,
}

impl StreamManagement {
    pub(crate) fn new(id: Option<String>, max: u32) -> StreamManagement {
        StreamManagement {
            inbound: 0,
            sent: 0,
            acked: 0,
            unacked: VecDeque::new(),
            id,
            max,
            requested: false,
        }
    }

    /// The resumption id, if this stream may be resumed.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Seconds after the connection's end within which it may be resumed.
    pub fn max_resume_secs(&self) -> u32 {
        self.max
    }

    /// Stanzas handled from the client so far.
    pub fn inbound(&self) -> u32 {
        self.inbound
    }

    /// Stanzas sent and not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Whether an `<r/>` is outstanding.
    pub fn ack_requested(&self) -> bool {
        self.requested
    }

    /// Takes the unacknowledged stanzas, oldest first: the stream is over and they are the
    /// server's to hand on.
    pub fn take_unacked(&mut self) -> Vec<Unacked> {
        std::mem::take(&mut self.unacked).into()
    }

    /// The state, taken apart; an outstanding `<r/>` is forgotten (the stream that
    /// resumes asks again).
    pub fn into_parts(self) -> SmParts {
        SmParts {
            inbound: self.inbound,
            sent: self.sent,
            acked: self.acked,
            unacked: self.unacked.into(),
            id: self.id,
            max: self.max,
        }
    }

    /// The state [`StreamManagement::into_parts`] took apart, for a stream to resume.
    pub fn from_parts(p: SmParts) -> StreamManagement {
        StreamManagement {
            inbound: p.inbound,
            sent: p.sent,
            acked: p.acked,
            unacked: p.unacked.into(),
            id: p.id,
            max: p.max,
            requested: false,
        }
    }

    /// Puts stanzas taken with [`StreamManagement::take_unacked`] back, unchanged: they were
    /// written again on a resumed stream.
    pub(crate) fn requeue(&mut self, queued: Vec<Unacked>) {
        self.unacked = queued.into();
    }

    pub(crate) fn handled(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    pub(crate) fn sent(&mut self, xml: &[u8], now_ms: i64) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(Unacked {
            xml: String::from_utf8_lossy(xml).into(),
            queued_ms: now_ms,
        });
    }

    pub(crate) fn set_requested(&mut self) {
        self.requested = true;
    }

    /// Applies the client's `h`: the stanzas it covers leave the queue.
    pub(crate) fn ack(&mut self, h: u32) -> Result<(), AckError> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(AckError::TooHigh { h, sent: self.sent });
        }
        self.unacked.drain(..newly);
        if self.unacked.is_empty() && self.unacked.capacity() > 0 {
            // An idle stream keeps no queue memory.
            self.unacked = VecDeque::new();
        }
        self.acked = h;
        self.requested = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_drop_what_they_cover_and_wrap() {
        let mut sm = StreamManagement::new(Some("id".into()), 300);
        for i in 0..3 {
            sm.sent(format!("<m{i}/>").as_bytes(), i);
        }
        assert_eq!(sm.unacked_len(), 3);
        sm.ack(2).unwrap();
        assert_eq!(sm.take_unacked()[0].xml.as_ref(), "<m2/>");
        assert_eq!(sm.ack(4), Err(AckError::TooHigh { h: 4, sent: 3 }));
        // Near the wrap: the counters go round 2^32 and on.
        let mut sm = StreamManagement::new(None, 0);
        sm.sent = u32::MAX - 1;
        sm.acked = u32::MAX - 1;
        for _ in 0..4 {
            sm.sent(b"<m/>", 0);
        }
        sm.ack(1).unwrap();
        assert_eq!(sm.unacked_len(), 1);
        assert!(sm.ack(3).is_err());
        for _ in 0..u8::MAX {
            sm.handled();
        }
        assert_eq!(sm.inbound(), 255);
    }

    #[test]
    fn parts_build_the_same_state_again() {
        let mut sm = StreamManagement::new(Some("id".into()), 300);
        sm.handled();
        for i in 0..3 {
            sm.sent(format!("<m{i}/>").as_bytes(), i);
        }
        sm.ack(1).unwrap();
        let again = StreamManagement::from_parts(sm.clone().into_parts());
        assert_eq!(again, sm);
        assert_eq!(again.inbound(), 1);
        assert_eq!(again.unacked_len(), 2);
    }
}
