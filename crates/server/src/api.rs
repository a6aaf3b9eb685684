//! What the HTTP API (`/api/v1`, in the web crate) asks of the server, as methods of
//! [`ServerView`]: logins that give bearer tokens, the tokens, registration, where a
//! message went, the archive, and the API session: a real XMPP resource of the token's
//! user, over a channel inside the server ([`ServerView::api_session`]).
//!
//! A token is 32 random bytes in base64url after `opt_`; the store keeps its SHA-256 only,
//! and its id (the hash's first 8 bytes in hex) names it in listings. Logins count against
//! the same throttle as SASL, so a password cannot be guessed faster over HTTP.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jid::{BareJid, Jid};
use minidom::Element;
use outpost_proto::sasl::{self, ScramHash, ScramKeys};
use outpost_proto::stanza::{Condition, ns};
use outpost_store::{ApiToken, ArchiveQuery, StoreError};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::ServerView;
use crate::c2s_ws::{ClientWebSocket, WsConn};
use crate::{archive, session};

const TOKEN_PREFIX: &str = "opt_";
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Most archived messages one history page holds.
pub const MAX_HISTORY_PAGE: u32 = 100;
/// Archive reads one history page may take (see [`ServerView::history`]).
const HISTORY_READS: usize = 10;

/// Why an API call about an account was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("wrong address or password")]
    BadCredentials,
    #[error("too many failed logins; try again in {retry_secs} s")]
    Throttled { retry_secs: u64 },
    /// A hub asked for a user whose site is up: log in there.
    #[error("this server stands in for {home} only while it is down: log in there")]
    WrongServer { home: String },
    #[error("registration is closed")]
    RegistrationClosed,
    #[error("too many registrations from this address; try again later")]
    RegistrationLimited,
    #[error("the account exists already")]
    Exists,
    #[error("{0}")]
    Invalid(String),
    #[error("the token is unknown, revoked or expired")]
    Unauthorized,
    #[error("{0} has no account here")]
    NoSuchUser(String),
    #[error("the server cannot answer now")]
    Unavailable,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        warn!(error = %e, "API: store failed");
        ApiError::Unavailable
    }
}

/// A login's token: the secret, shown once, and what the store keeps of it.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub secret: String,
    pub token: ApiToken,
}

/// Where a message just sent went, as the HTTP API says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageState {
    /// A session of the recipient took it.
    Delivered,
    /// Kept offline for the recipient.
    Stored,
    /// In the durable queue for another server.
    Queued,
}

/// One archived chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    /// The archive id (the XEP-0359 stanza-id).
    pub id: String,
    pub from: String,
    pub to: String,
    pub body: String,
    /// The id its sender gave the message (its origin-id, or else its `id`).
    pub message_id: Option<String>,
    /// The out-of-band URL (XEP-0066) the message shares, if any: a file.
    pub url: Option<String>,
    pub at_ms: i64,
}

/// The SHA-256 of a token's text.
fn token_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn token_id(hash: &[u8]) -> String {
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl ServerView {
    /// Checks `jid` and `password` as SASL PLAIN would (with the same throttle) and issues
    /// a token, labelled with what the client calls itself.
    pub async fn api_login(
        &self,
        jid: &str,
        password: &str,
        label: Option<&str>,
        peer: IpAddr,
    ) -> Result<IssuedToken, ApiError> {
        let user = BareJid::new(jid.trim()).map_err(|_| ApiError::BadCredentials)?;
        let domain = user.domain().as_str();
        let ours = self.delivery.is_home(domain) || self.delivery.standby().is_site(domain);
        if user.node().is_none() || !ours {
            return Err(ApiError::BadCredentials);
        }
        self.delivery
            .may_serve(domain)
            .await
            .map_err(|home| ApiError::WrongServer { home })?;
        let now = std::time::Instant::now();
        let throttle = &self.sessions.throttle;
        if let Err(t) = throttle.check(now, peer, user.as_str()) {
            return Err(ApiError::Throttled {
                retry_secs: t.retry_in.as_secs().max(1),
            });
        }
        if !self.password_matches(&user, password).await? {
            info!(account = %user, "API login failed");
            self.delivery.counters().login_failed();
            throttle.record_failure(now, peer, Some(user.as_str()));
            return Err(ApiError::BadCredentials);
        }
        throttle.record_success(peer, user.as_str());
        let lifetime = i64::from(self.sessions.config().api.token_lifetime_days) * DAY_MS;
        let secret = format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(crate::ids::random_bytes::<32>())
        );
        let hash = token_hash(&secret);
        let created_ms = crate::clock::now_ms();
        let token = ApiToken {
            id: token_id(&hash),
            hash,
            owner: user.to_string(),
            label: label.map(|l| l.chars().take(100).collect()),
            created_ms,
            expires_ms: created_ms + lifetime,
        };
        self.delivery.store().token_add(&token).await?;
        info!(account = %user, token = %token.id, "API login");
        Ok(IssuedToken { secret, token })
    }

    /// Whether `password` is the user's, costing the same for an unknown user.
    async fn password_matches(&self, user: &BareJid, password: &str) -> Result<bool, ApiError> {
        let creds = self.delivery.store().credentials(user.as_str()).await?;
        let dummy = ScramKeys {
            salt: crate::ids::random_bytes::<16>().to_vec(),
            iterations: sasl::DEFAULT_ITERATIONS,
            stored_key: Vec::new(),
            server_key: Vec::new(),
        };
        let password = password.to_owned();
        let keys = creds.map(|c| ScramKeys {
            salt: c.sha256.salt,
            iterations: c.sha256.iterations,
            stored_key: c.sha256.stored_key,
            server_key: c.sha256.server_key,
        });
        // The key derivation is deliberately slow: off the runtime's threads.
        let verdict = tokio::task::spawn_blocking(move || match keys {
            Some(k) => sasl::verify_password(&k, ScramHash::Sha256, &password),
            None => {
                let _ = sasl::verify_password(&dummy, ScramHash::Sha256, &password);
                false
            }
        });
        verdict.await.map_err(|_| ApiError::Unavailable)
    }

    /// The token `secret` stands for, if it is known and not expired.
    pub async fn api_token(&self, secret: &str) -> Result<ApiToken, ApiError> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Err(ApiError::Unauthorized);
        }
        let token = self
            .delivery
            .store()
            .token_by_hash(&token_hash(secret))
            .await?;
        match token {
            Some(t) if t.expires_ms > crate::clock::now_ms() => Ok(t),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// The account's tokens, oldest first.
    pub async fn api_tokens(&self, owner: &str) -> Result<Vec<ApiToken>, ApiError> {
        Ok(self.delivery.store().tokens_of(owner).await?)
    }

    /// Revokes one token of the account; whether it was there.
    pub async fn api_revoke(&self, owner: &str, id: &str) -> Result<bool, ApiError> {
        Ok(self.delivery.store().token_remove(owner, id).await?)
    }

    /// Revokes every token of the account; how many.
    pub async fn api_revoke_all(&self, owner: &str) -> Result<u64, ApiError> {
        Ok(self.delivery.store().tokens_remove_all(owner).await?)
    }

    /// Forgets expired tokens; how many.
    pub async fn api_expire_tokens(&self) -> Result<u64, ApiError> {
        let now = crate::clock::now_ms();
        Ok(self.delivery.store().tokens_expire(now).await?)
    }

    /// Registers `username` at `domain` (the first served when `None`), with the limits of
    /// in-band registration (XEP-0077); the new JID.
    pub async fn api_register(
        &self,
        username: &str,
        domain: Option<&str>,
        password: &str,
        peer: IpAddr,
    ) -> Result<String, ApiError> {
        let config = self.sessions.config();
        let domain = domain.unwrap_or_else(|| config.domains[0].as_str());
        if !config.registration_enabled() || !self.delivery.is_home(domain) {
            return Err(ApiError::RegistrationClosed);
        }
        let username = username.trim();
        if username.is_empty()
            || password.is_empty()
            || password.len() > crate::services::MAX_PASSWORD
        {
            return Err(ApiError::Invalid(
                "the username and the password must not be empty".to_owned(),
            ));
        }
        let registrations = &self.sessions.registrations;
        let made = crate::services::create_registered(
            &self.delivery,
            &config,
            registrations,
            peer,
            domain,
            username,
            password,
        )
        .await;
        made.map_err(|e| match e.condition {
            Condition::Conflict => ApiError::Exists,
            Condition::ResourceConstraint => ApiError::RegistrationLimited,
            Condition::NotAcceptable => {
                ApiError::Invalid(format!("`{username}` is not a valid username"))
            }
            _ => ApiError::Unavailable,
        })
    }

    /// Where a message to `to` goes if sent now: to a session of the recipient, to its
    /// offline store, or to another server's queue. `NoSuchUser` for an address of ours
    /// with no account, which the message would only bounce from.
    pub async fn message_state(&self, to: &Jid) -> Result<MessageState, ApiError> {
        let domain = to.domain();
        if !self.delivery.is_local(domain.as_str()) {
            return Ok(MessageState::Queued);
        }
        let router = self.delivery.router();
        let online = match to.try_as_full() {
            Ok(full) => router.is_bound(full),
            Err(_) => !router.message_targets(&to.to_bare(), false).is_empty(),
        };
        if online {
            return Ok(MessageState::Delivered);
        }
        let bare = to.to_bare();
        if bare.node().is_none() || !self.delivery.store().account_exists(bare.as_str()).await? {
            return Err(ApiError::NoSuchUser(bare.to_string()));
        }
        Ok(MessageState::Stored)
    }

    /// A page of the chat messages between `owner` and `with` in `owner`'s archive, oldest
    /// first: the newest before `before` (or the newest of all), or the oldest after
    /// `after`; and whether the page reaches the end it pages towards.
    pub async fn history(
        &self,
        owner: &BareJid,
        with: &BareJid,
        before: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<HistoryItem>, bool), ApiError> {
        let cursor = |text: Option<&str>| match text {
            Some(t) => archive::decode_id(t)
                .map(Some)
                .ok_or_else(|| ApiError::Invalid(format!("`{t}` is not a message id"))),
            None => Ok(None),
        };
        let (mut before, mut after) = (cursor(before)?, cursor(after)?);
        let limit = limit.clamp(1, MAX_HISTORY_PAGE) as usize;
        let backwards = after.is_none();
        let mut items = Vec::new();
        // Archived messages without a body (receipts, markers) are skipped, so a page may
        // take more than one read; each read is bounded, and so is their number.
        for _ in 0..HISTORY_READS {
            let query = ArchiveQuery {
                owner: owner.as_str(),
                with: Some(with.as_str()),
                after,
                before,
                limit: MAX_HISTORY_PAGE,
                newest_first: backwards,
            };
            let rows = self.delivery.store().archive_page(&query).await?;
            let exhausted = rows.len() < MAX_HISTORY_PAGE as usize;
            for row in rows {
                if backwards {
                    before = Some(row.id);
                } else {
                    after = Some(row.id);
                }
                if let Some(item) = history_item(row) {
                    items.push(item);
                    if items.len() > limit {
                        break;
                    }
                }
            }
            if exhausted || items.len() > limit {
                break;
            }
        }
        let complete = items.len() <= limit;
        items.truncate(limit);
        if backwards {
            items.reverse();
        }
        Ok((items, complete))
    }

    /// Starts the API session of `user`: a client stream the server treats as any other
    /// (presence, roster pushes, carbons, offline delivery, limits), opened already
    /// authenticated, over a channel that carries RFC 7395 framing like a WebSocket's. The
    /// caller opens it with `<open/>`, binds a resource and speaks XMPP. `None` at the
    /// connection cap.
    pub async fn api_session(&self, user: BareJid, peer: SocketAddr) -> Option<ClientWebSocket> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        let (conn, http) = WsConn::pair(self.stream_limits());
        let env = self.sessions.clone();
        self.tasks.spawn(async move {
            session::serve_api(env, conn, peer, user).await;
            drop(permit);
        });
        Some(http)
    }

    /// Every account, sorted; those of `domain` only when given.
    pub async fn api_users(&self, domain: Option<&str>) -> Result<Vec<String>, ApiError> {
        let mut users = self.delivery.store().list_accounts().await?;
        if let Some(d) = domain {
            users.retain(|u| u.rsplit_once('@').is_some_and(|(_, ud)| ud == d));
        }
        users.sort();
        Ok(users)
    }

    /// Makes an account (the operator's `outpost user add`).
    pub async fn api_add_user(&self, jid: &str, password: &str) -> Result<String, ApiError> {
        let jid = crate::accounts::normalize_user_jid(jid)
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let domain = jid.rsplit_once('@').map_or("", |(_, d)| d);
        if !self.delivery.is_home(domain) {
            return Err(ApiError::Invalid(format!("`{domain}` is not served here")));
        }
        let iterations = self.sessions.config().auth.scram_iterations;
        let store = self.delivery.store().as_ref();
        match crate::accounts::add_user(store, &jid, password, iterations).await {
            Ok(()) => Ok(jid),
            Err(crate::accounts::AccountError::Store(StoreError::AccountExists)) => {
                Err(ApiError::Exists)
            }
            Err(crate::accounts::AccountError::Store(e)) => Err(e.into()),
            Err(e) => Err(ApiError::Invalid(e.to_string())),
        }
    }

    /// Removes an account with everything it owns and ends its sessions; whether it
    /// existed.
    pub async fn api_remove_user(&self, jid: &str) -> Result<bool, ApiError> {
        let user =
            BareJid::new(jid).map_err(|_| ApiError::Invalid(format!("`{jid}` is not a JID")))?;
        match crate::accounts::remove_user(self.delivery.store().as_ref(), user.as_str()).await {
            Ok(()) => {}
            Err(crate::accounts::AccountError::Store(StoreError::NoSuchAccount)) => {
                return Ok(false);
            }
            Err(crate::accounts::AccountError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(ApiError::Invalid(e.to_string())),
        }
        let router = self.delivery.router();
        router.end_sessions(&user, None, "not-authorized", "account removed");
        Ok(true)
    }

    /// The admin token of the API routes, when the configuration sets one.
    pub fn api_admin_token(&self) -> Option<String> {
        self.sessions.config().api.admin_token.clone()
    }

    /// The API's settings now.
    pub fn api_config(&self) -> crate::config::ApiConfig {
        self.sessions.config().api.clone()
    }

    /// The multi-user chat service of `domain`'s users, when it runs here.
    pub fn room_service(&self, domain: &str) -> Option<String> {
        let config = self.sessions.config();
        let service = format!("{}.{domain}", config.muc.subdomain);
        (config.muc.enabled && self.delivery.is_service(&service)).then_some(service)
    }

    /// The file upload service of `domain`'s users, when it runs here.
    pub fn upload_service(&self, domain: &str) -> Option<String> {
        let config = self.sessions.config();
        let service = format!("{}.{domain}", config.upload.subdomain);
        (config.upload.enabled && self.delivery.is_service(&service)).then_some(service)
    }

    /// Whether `domain`'s users have their accounts here (a room there would be a user).
    pub fn serves_users(&self, domain: &str) -> bool {
        self.delivery.is_local(domain)
    }

    /// Whether stanzas for `domain` are taken here (one of our domains or services),
    /// rather than queued for another server.
    pub fn serves(&self, domain: &str) -> bool {
        self.delivery.is_local(domain) || self.delivery.is_service(domain)
    }
}

/// An archived message as history, if it has a body.
fn history_item(row: outpost_store::ArchivedMessage) -> Option<HistoryItem> {
    let el: Element = row.stanza.parse().ok()?;
    let body = el.get_child("body", ns::CLIENT)?.text();
    let url = (el.get_child("x", ns::OOB))
        .and_then(|x| x.get_child("url", ns::OOB))
        .map(Element::text);
    let origin = (el.get_child("origin-id", ns::SID)).and_then(|o| o.attr("id"));
    let message_id = origin.or_else(|| el.attr("id")).map(str::to_owned);
    Some(HistoryItem {
        id: archive::encode_id(row.id),
        message_id,
        from: row.sender,
        to: row.recipient,
        body,
        url,
        at_ms: archive::time_of(row.id),
    })
}

/// Unix milliseconds as an RFC 3339 time in UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    // Whole seconds, so the format leaves out the fraction.
    let at = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
