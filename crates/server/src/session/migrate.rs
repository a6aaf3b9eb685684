//! A session moving between nodes of a cluster (see `handover`): its client resumed its
//! managed stream at another node. The session that leaves hands over its state and goes
//! silent; the connection that resumed becomes the session, with the same full JID,
//! presence and queue, as if the client had never left.

use std::collections::HashSet;
use std::sync::Arc;

use jid::{BareJid, Jid};
use outpost_proto::sm::StreamManagement;
use outpost_proto::stanza;
use tracing::{info, warn};

use super::{End, Session};
use crate::cluster::{Arrived, Cluster};
use crate::handover::{Handover, Migration, Stream};
use crate::router::{BindOutcome, SessionRx, ToSession};

impl Session {
    /// Asks the other nodes for the stream `previd` and, if one hands its session over,
    /// continues it on this connection.
    pub(super) async fn resume_from_elsewhere(
        &mut self,
        cluster: &Cluster,
        user: &BareJid,
        previd: &str,
        h: u32,
    ) -> Option<End> {
        match cluster.resume(user, previd).await {
            Ok(arrived) => self.take_over(arrived, h).await,
            Err(ended_h) => self.proto.sm_resume_failed(ended_h),
        }
        None
    }

    /// Becomes the session another node handed over: bound as its full JID, with its
    /// presence, and its unacknowledged stanzas written again after `<resumed/>`.
    async fn take_over(&mut self, arrived: Arrived, h: u32) {
        let Arrived { node, handover } = arrived;
        let m = *handover;
        let jid = m.jid.clone();
        let sm = Box::new(StreamManagement::from_parts(m.stream.clone().into_parts()));
        self.restore(&m);
        let user = jid.to_bare();
        let env = self.env.clone();
        let router = env.delivery.router();
        let loaded = self.load_lists(&user).await;
        // The old node unbound it before handing it over; its change may not be here yet.
        router.unbind_remote(&node, &jid, m.session_id);
        let bound = match loaded {
            Ok(()) => matches!(self.bind_here(&jid), BindOutcome::Bound),
            Err(e) => {
                warn!(error = %e, "cannot load roster or block list");
                false
            }
        };
        if !bound {
            // It cannot go on here: it ends as it would have where it was.
            self.end_handed_over(sm.as_ref().clone(), &m.stream.id)
                .await;
            self.proto.sm_resume_failed(None);
            return;
        }
        router.set_presence(&jid, self.id, m.available, m.priority);
        router.set_carbons(&jid, self.id, m.carbons);
        let announced = self
            .current_presence()
            .and_then(|p| crate::caps::Announced::of(&p));
        let features = m.caps_features.map(Arc::from);
        let served = m.caps_served.iter().filter_map(|j| BareJid::new(j).ok());
        env.delivery
            .caps()
            .moved_in(&jid, announced, features, served.collect());
        let resumable = router.resumable();
        resumable.register(&m.stream.id, &user, self.tx.clone());
        info!(%node, unacked = sm.unacked_len(), "session resumed from another node");
        self.proto.sm_resumed(jid, sm, h);
    }

    /// The session's own state from a handover.
    fn restore(&mut self, m: &Handover) {
        self.jid = Some(m.jid.clone());
        self.available = m.available;
        self.priority = m.priority;
        self.presence = m.presence.as_deref().map(Into::into);
        self.directed = m.directed.iter().filter_map(|j| Jid::new(j).ok()).collect();
        self.roster_interested = m.roster_interested;
        self.blocklist_interested = m.blocklist_interested;
        self.csi.inactive = m.inactive;
        self.avatar_hash.clone_from(&m.avatar_hash);
    }

    /// A session handed over that cannot go on: unavailable to those who had its
    /// presence, and what its client never acknowledged handed on (as when nobody
    /// resumes). The connection goes on unbound.
    async fn end_handed_over(&mut self, mut sm: StreamManagement, id: &str) {
        if self.available || !self.directed.is_empty() {
            let jid = self
                .jid
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let unavailable = stanza::presence(Some("unavailable"), &jid, None);
            self.broadcast_unavailable(unavailable);
        }
        self.proto.discard_output();
        if let Some(user) = self.user.clone() {
            let resumable = self.delivery().router().resumable();
            resumable.ended(id, &user, sm.inbound());
        }
        self.hand_on_all(sm.take_unacked()).await;
        self.jid = None;
        self.directed = HashSet::new();
        self.presence = None;
    }

    /// What the node this session moves to needs of it.
    fn handover(&self, jid: jid::FullJid, carbons: bool, stream: Stream) -> Box<Handover> {
        let (features, served) = self.delivery().caps().moving_out(&jid);
        Box::new(Handover {
            jid,
            session_id: self.id,
            available: self.available,
            priority: self.priority,
            presence: self.presence.as_deref().map(str::to_owned),
            directed: self.directed.iter().map(ToString::to_string).collect(),
            roster_interested: self.roster_interested,
            blocklist_interested: self.blocklist_interested,
            carbons,
            inactive: self.csi.inactive,
            avatar_hash: self.avatar_hash.clone(),
            caps_features: features.map(|f| f.to_vec()),
            caps_served: served.iter().map(ToString::to_string).collect(),
            stream,
        })
    }

    /// Another node asks for this session: it leaves the router, takes in what was on its
    /// way, and hands itself over; it ends silently once that node took it, or as it
    /// would have without the attempt if it did not.
    pub(super) async fn move_away(mut self: Box<Self>, m: Migration, mut rx: SessionRx) {
        let Some(jid) = self.jid.clone() else {
            // Only a bound session is resumable; should one not be, it just ends.
            return Box::pin(self.finish()).await;
        };
        self.settle().await;
        // Offline messages are not taken on the way: they wait for the session there.
        self.detached = true;
        self.release_offline();
        let env = self.env.clone();
        let router = env.delivery.router();
        let carbons = router.local_entry(&jid, self.id).is_some_and(|e| e.carbons);
        router.unbind(&jid, self.id);
        while let Ok(msg) = rx.try_recv() {
            match *msg {
                ToSession::Resume(_) | ToSession::Migrate(_) => {}
                other => Box::pin(self.on_message_from_router(other)).await,
            }
        }
        self.settle().await;
        self.proto.discard_output();
        let Some(sm) = self.proto.take_sm() else {
            return Box::pin(self.finish()).await;
        };
        let Some(stream) = Stream::of((*sm).clone().into_parts()) else {
            // A stream without a resumption id is never asked for; it ends here.
            return self.end_handed_over(*sm, "").await;
        };
        let handover = self.handover(jid, carbons, stream);
        let id = handover.stream.id.clone();
        let taken = match m.handover.send(handover) {
            Ok(()) => m.taken.await.unwrap_or(false),
            Err(_) => false,
        };
        if taken {
            router.resumable().moved(&id);
            info!("session moved to another node");
        } else {
            info!("the other node did not take the session; it ends here");
            self.end_handed_over(*sm, &id).await;
        }
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let ToSession::Stanza(el) = *msg {
                Box::pin(self.rescue(el)).await;
            }
        }
    }
}
