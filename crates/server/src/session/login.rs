//! Logging in: SASL credentials (with failed-login throttling), in-band registration
//! before authentication, and resource binding.

use std::sync::Arc;

use jid::{BareJid, FullJid};
use minidom::Element;
use outpost_proto::sasl::ScramKeys;
use outpost_proto::stanza::{Condition, ErrorType, StanzaError};
use tracing::{info, warn};

use super::Session;
use crate::router::{BindOutcome, Binding};

fn scram_keys(k: &outpost_store::ScramKeys) -> ScramKeys {
    ScramKeys {
        salt: k.salt.clone(),
        iterations: k.iterations,
        stored_key: k.stored_key.clone(),
        server_key: k.server_key.clone(),
    }
}

impl Session {
    /// SASL needs the stored keys of `username@domain`: looked up unless the account or
    /// address is throttled.
    pub(super) async fn provide_credentials(&mut self, username: &str, domain: &str) {
        if let Err(home) = self.delivery().may_serve(domain).await {
            // A hub, for a site that is up: the user logs in there.
            info!(domain, %home, "login sent home");
            self.proto.redirect(&home);
            return;
        }
        let account = format!("{username}@{domain}");
        let now = std::time::Instant::now();
        if let Err(t) = self.env.throttle.check(now, self.peer.ip(), &account) {
            // RFC 6120 §6.5.11: not about the password, so whatever the password was.
            info!(
                account,
                throttled_by = t.scope.as_str(),
                retry_in_secs = t.retry_in.as_secs(),
                "login refused: too many failed logins"
            );
            self.proto.auth_rejected("temporary-auth-failure");
            return;
        }
        let creds = match BareJid::new(&account) {
            Ok(jid) => match self.delivery().store().credentials(jid.as_str()).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot read credentials");
                    self.proto.auth_rejected("temporary-auth-failure");
                    return;
                }
            },
            Err(_) => None,
        };
        let (sha1, sha256) = match &creds {
            Some(c) => (Some(scram_keys(&c.sha1)), Some(scram_keys(&c.sha256))),
            None => (None, None),
        };
        let nonce = crate::ids::random_id(24);
        let seed: [u8; 16] = crate::ids::random_bytes();
        self.proto.provide_credentials(sha1, sha256, &nonce, &seed);
    }

    pub(super) fn authenticated(&mut self, user: BareJid) {
        self.env
            .throttle
            .record_success(self.peer.ip(), user.as_str());
        // The span's `jid` is recorded once, with the resource, at bind.
        info!(user = %user, "authenticated");
        self.user = Some(user);
    }

    pub(super) fn auth_failed(&mut self, username: Option<String>, condition: &'static str) {
        let account = username.map(|u| format!("{u}@{}", self.proto.domain()));
        info!(
            account = account.as_deref().unwrap_or(""),
            condition, "authentication failed"
        );
        self.env.delivery.counters().login_failed();
        self.env.throttle.record_failure(
            std::time::Instant::now(),
            self.peer.ip(),
            account.as_deref(),
        );
    }

    /// An IQ before authentication: only registration (XEP-0077) is served.
    pub(super) async fn on_pre_auth_iq(&mut self, el: Element) {
        let env = self.env.clone();
        let domain = self.proto.domain().to_owned();
        let answer = crate::services::register_new(
            &env.delivery,
            &env.config(),
            &env.registrations,
            self.peer.ip(),
            &domain,
            &el,
        )
        .await;
        self.answer(&el, answer);
    }

    /// Reads the user's roster and block list into the session.
    pub(super) async fn load_lists(
        &mut self,
        user: &BareJid,
    ) -> Result<(), outpost_store::StoreError> {
        let store = self.delivery().store().clone();
        let roster = store.roster(user.as_str()).await?;
        let blocklist = store.blocklist(user.as_str()).await?;
        self.roster = roster
            .items
            .into_iter()
            .map(|i| (i.jid.clone(), i))
            .collect();
        self.blocklist = Arc::new(blocklist);
        Ok(())
    }

    /// Registers this session in the router as `jid` (within the account's limit).
    pub(super) fn bind_here(&self, jid: &FullJid) -> BindOutcome {
        let max = self.env.config().limits.max_resources_per_account;
        let binding = Binding {
            jid: jid.clone(),
            session_id: self.id,
            tx: self.tx.clone(),
            peer: self.peer,
            since_ms: crate::clock::now_ms(),
        };
        self.delivery().router().bind(binding, max)
    }

    /// Binds the requested (or a generated) resource, once the roster and block list the
    /// session needs are loaded.
    pub(super) async fn bind(&mut self, requested: Option<String>) {
        let Some(user) = self.user.clone() else {
            self.proto.bind_result(Err(StanzaError::with_type(
                ErrorType::Cancel,
                Condition::NotAuthorized,
            )));
            return;
        };
        let resource = requested.unwrap_or_else(|| format!("outpost-{}", crate::ids::random_id(8)));
        let Ok(jid) = user.with_resource_str(&resource) else {
            self.proto
                .bind_result(Err(StanzaError::new(Condition::BadRequest)));
            return;
        };
        // Load what the session needs before it can receive anything.
        if let Err(e) = self.load_lists(&user).await {
            warn!(error = %e, "cannot load roster or block list");
            // Cancel, not wait: the client should not bind again on this stream.
            self.proto.bind_result(Err(StanzaError::with_type(
                ErrorType::Cancel,
                Condition::InternalServerError,
            )));
            return;
        }
        match self.bind_here(&jid) {
            BindOutcome::Bound => self.proto.bind_result(Ok(jid)),
            BindOutcome::TooMany => self
                .proto
                .bind_result(Err(StanzaError::new(Condition::ResourceConstraint))),
        }
    }
}
