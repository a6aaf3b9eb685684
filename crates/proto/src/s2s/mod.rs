//! Server-to-server streams (RFC 6120 §4–§6, XEP-0220, XEP-0178, XEP-0198), sans IO.
//!
//! Two state machines, one per role, shaped like [`crate::c2s::C2sStream`]: bytes in
//! (`handle_input`), bytes out (`take_output`), [`Event`]s out (`poll_event`), and answer
//! methods for the events that need the server (a TLS handshake, a certificate check, a
//! dialback key or verdict). Neither reads a clock or draws random numbers: stream ids and
//! dialback keys are passed in.
//!
//! - [`S2sIncoming`] is the *receiving entity*: a peer server connected to us. It offers
//!   STARTTLS, then SASL EXTERNAL (when the server says the peer's certificate is good for
//!   the domain it claims) and dialback, then stream management, and yields the peer's
//!   stanzas.
//! - [`S2sOutgoing`] is the *initiating entity*: we connected to a peer for one
//!   (local domain, remote domain) pair. It negotiates TLS, authenticates with SASL EXTERNAL
//!   when offered and configured, else with dialback, enables stream management when
//!   offered, and then writes the stanzas the server hands it. It also carries dialback
//!   verification requests (`db:verify`) for the server acting as a receiving server.
//!
//! # The stream
//!
//! Both ends write `<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback'
//! version='1.0' from=… to=…>` (RFC 6120 §4.7, XEP-0220 §2.1). The `db` prefix is declared
//! on the header because Prosody, ejabberd and older servers all write `<db:result/>` with
//! that prefix; we write dialback elements with it too. A header whose default namespace is
//! not `jabber:server` is answered with `invalid-namespace`, and any version other than 1.x
//! with `unsupported-version` (RFC 6120 §4.7.5): pre-RFC dialback-only streams without
//! `version` are not supported.
//!
//! # Features and their order
//!
//! On the incoming side (RFC 6120 §4.3.2, §5.3.1, §6.3.1):
//! 1. Before TLS only `<starttls><required/></starttls>` is offered (without `<required/>`
//!    and with dialback beside it when [`S2sConfig::allow_plaintext`] is set, for loopback
//!    tests). Anything but `<starttls/>` before TLS closes the stream with
//!    `policy-violation`.
//! 2. After TLS, when [`S2sConfig::sasl_external`] is set and the header names the peer's
//!    domain, the machine asks the server with [`Event::CheckCertificate`] and offers
//!    `EXTERNAL` only if the answer is yes (XEP-0178 §2). Dialback is offered as
//!    `<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>` (XEP-0220 §2.1.1,
//!    §2.4), so peers know we understand dialback errors.
//! 3. After SASL success and the stream restart (RFC 6120 §6.4.6), only
//!    `<sm xmlns='urn:xmpp:sm:3'/>` is offered (XEP-0198 §3: after authentication). With
//!    dialback, which never restarts the stream, `<sm/>` is offered beside `<dialback/>`
//!    and `<enable/>` is accepted once a pair is authenticated.
//!
//! # Authentication and addressing
//!
//! Authentication is per (peer domain, local domain) pair. SASL EXTERNAL authenticates the
//! pair (header `from`, header `to`); an authorization identity, if sent, must equal the
//! header's `from` (XEP-0178 §2). Each successful `<db:result/>` authenticates the pair it
//! names. An incoming stanza must carry `from` and `to` (else `improper-addressing`,
//! RFC 6120 §4.9.3.7); its `to` must be a domain we host (else `host-unknown`, §4.9.3.6);
//! and its (from domain, to domain) pair must be authenticated on this stream (else
//! `invalid-from`, §4.9.3.9). A stanza before any authentication is `not-authorized`
//! (§4.9.3.12).
//!
//! Stanzas on the wire are in `jabber:server`; the server's routing speaks `jabber:client`.
//! [`S2sIncoming`] yields [`Event::Stanza`] with every `jabber:server` element of the stanza
//! re-namespaced to `jabber:client`; [`S2sOutgoing::send_stanza`] takes `jabber:client`
//! elements and writes them in `jabber:server`, so nothing past this boundary (nor a typed
//! stanza library bound to `jabber:client`) sees the difference. A stanza that arrives in
//! `jabber:client` on a server stream is `invalid-namespace`.
//!
//! # Relaying
//!
//! Outpost sites that cannot reach each other directly may go through a hub: another
//! Outpost server both trust. Authentication stays per pair (site ↔ hub); what changes is
//! addressing, under [`RelayPolicy`]:
//! - a site's [`S2sOutgoing`] to its hub (`relay.outgoing`) writes stanzas addressed to
//!   other domains; the hub's [`S2sIncoming`] accepts a stanza whose `to` is not a domain
//!   it hosts only when both the sender's authenticated domain and the `to` domain are in
//!   `relay.relay_for` (else `host-unknown`, as without relaying);
//! - the hub's [`S2sOutgoing`] to the destination site (`relay.outgoing`) writes stanzas
//!   whose `from` is the original sender's domain; the site's [`S2sIncoming`] accepts a
//!   `from` outside the authenticated pair only on a stream where a domain in
//!   `relay.trusted_hubs` authenticated for the `to` domain, and never a `from` at one of
//!   its own domains (`invalid-from`).
//!
//! # Dialback (XEP-0220)
//!
//! The three roles map onto the two machines:
//! - Originating server: [`S2sOutgoing`] asks for its key with [`Event::NeedDialbackKey`]
//!   (the server computes it with [`dialback_key`], XEP-0185) and sends `<db:result/>`
//!   (§2.1.1). The answer `type='valid'` authenticates the stream; `invalid` or `error`
//!   ends it with [`Event::AuthFailed`].
//! - Receiving server: [`S2sIncoming`] turns each `<db:result/>` into
//!   [`Event::DialbackRequest`]; the server verifies it (by sending `<db:verify/>` over an
//!   [`S2sOutgoing`] to the authoritative server with [`S2sOutgoing::send_dialback_verify`]
//!   and waiting for [`Event::VerifyResult`]) and answers with
//!   [`S2sIncoming::dialback_result`] (§2.1.2–§2.1.4).
//! - Authoritative server: [`S2sIncoming`] turns `<db:verify/>` into
//!   [`Event::VerifyRequest`]; the server recomputes the key and answers with
//!   [`S2sIncoming::verify_result`] (§2.1.3).
//!
//! Supported: several originating domains on one incoming stream (piggybacking, XEP-0220
//! §2.5 and XEP-0344), each verified on its own; dialback errors (§2.4), sent for an unknown
//! `to` and understood when received. Not supported: piggybacking on the outgoing side (an
//! [`S2sOutgoing`] serves exactly one pair; open another for another pair), dialback on
//! streams without `version='1.0'`, and XEP-0288 bidirectional streams (a peer that sends
//! stanzas on our outgoing stream gets `unsupported-stanza-type`).
//!
//! # Stream management (XEP-0198)
//!
//! Acknowledgements only; no resumption. [`S2sOutgoing`] sends `<enable/>` once
//! authenticated when the peer offered `<sm xmlns='urn:xmpp:sm:3'/>` (after a SASL restart;
//! a dialback-authenticated stream enables it only if the pre-authentication features offered
//! it, which [`S2sIncoming`] does, so dialback links between Outpost servers have
//! acknowledgements). It reports [`Event::Ready`] when stanzas may
//! flow. [`S2sOutgoing::send_stanza`] returns each stanza's sequence number, and
//! [`Event::Acked`] `{ h }` says the peer has handled every stanza up to `h`, so the server
//! can drop them from its durable outbox; [`S2sOutgoing::request_ack`] writes `<r/>`.
//! [`S2sIncoming`] accepts `<enable/>` once any pair is authenticated, counts the stanzas it
//! yields and answers `<r/>` with `<a h=…/>`. An `<a/>` acknowledging more than was sent is
//! `undefined-condition` with `<handled-count-too-high/>` (XEP-0198 §5); counts wrap at
//! 2^32 (§4).
//!
//! **Contract for durability:** the machine writes `<a h/>` into its output as soon as it
//! reads `<r/>`, after the [`Event::Stanza`]s it counts. The server must handle (store) the
//! events it polled before it writes the output that follows them, so an acknowledgement
//! never leaves before the stanzas it covers are durable.
//!
//! # Errors
//!
//! Every failure the peer causes becomes a stream error (RFC 6120 §4.9.3) followed by
//! [`Event::Closed`]; nothing the peer sends can panic. A `<stream:error/>` from the peer is
//! reported as [`Event::PeerStreamError`] before [`Event::Closed`].

pub(crate) mod common;
mod incoming;
mod outgoing;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub use crate::c2s::Transport;
pub use incoming::S2sIncoming;
pub use outgoing::S2sOutgoing;

use crate::xml::Limits;

/// What the server tells an s2s state machine about its policy.
#[derive(Clone, Debug)]
pub struct S2sConfig {
    /// STARTTLS on a plain connection, or TLS from the first byte (XEP-0368).
    pub transport: Transport,
    /// Authenticate and exchange stanzas without TLS. Only for tests on loopback: RFC 6120
    /// §5.3.1 lets a deployment make TLS mandatory, and Outpost does.
    pub allow_plaintext: bool,
    /// Offer (incoming) or use (outgoing) server dialback (XEP-0220).
    pub dialback: bool,
    /// Incoming: ask the server whether the peer's certificate is good for the domain it
    /// claims, and offer SASL EXTERNAL when it is. Outgoing: authenticate with EXTERNAL when
    /// offered (we presented a certificate for our domain), before trying dialback.
    pub sasl_external: bool,
    /// Offer (incoming) or enable (outgoing) XEP-0198 acknowledgements.
    pub stream_management: bool,
    /// Stanza size and depth limits for what the peer sends.
    pub limits: Limits,
    /// Relaying through a hub (see "Relaying" above). Empty or off by default.
    pub relay: RelayPolicy,
}

/// Who may carry stanzas for domains other than the stream's authenticated pair.
#[derive(Clone, Debug, Default)]
pub struct RelayPolicy {
    /// Incoming, on a hub: domains that may send stanzas addressed to one another through
    /// us. A stanza from an authenticated peer in this list, addressed to another domain in
    /// it that we do not host, is yielded like any other; the server forwards it.
    pub relay_for: Vec<String>,
    /// Incoming, on a site: hubs trusted to relay for other domains. A stanza on a pair
    /// authenticated for one of these hubs may carry any `from` domain but our own.
    pub trusted_hubs: Vec<String>,
    /// Outgoing: this stream goes to a hub (or is a hub's stream to a site), so stanzas
    /// need not be addressed from our local to its remote domain.
    pub outgoing: bool,
}

impl Default for S2sConfig {
    /// STARTTLS required, dialback, SASL EXTERNAL and stream management on, and 512 KiB per
    /// stanza (servers relay what their clients send, so they get more room than a client;
    /// Prosody uses the same figure).
    fn default() -> Self {
        S2sConfig {
            transport: Transport::StartTls,
            allow_plaintext: false,
            dialback: true,
            sasl_external: true,
            stream_management: true,
            limits: Limits {
                max_stanza_bytes: 512 * 1024,
                max_depth: 64,
            },
            relay: RelayPolicy::default(),
        }
    }
}

/// How a domain pair was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with the peer's certificate (RFC 6120 §6.4, XEP-0178).
    SaslExternal,
    /// Server dialback (XEP-0220).
    Dialback,
}

/// The server's verdict on a dialback key (XEP-0220 §2.1.4, §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialbackVerdict {
    /// The authoritative server confirmed the key.
    Valid,
    /// The authoritative server denied it.
    Invalid,
    /// Verification could not be done; the stanza error condition to report, such as
    /// `remote-connection-failed` or `remote-server-timeout` (XEP-0220 §2.4).
    Error(&'static str),
}

/// Something the server must know or do. Each variant says which role emits it.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Both roles: TLS was agreed (incoming: `<proceed/>` is in the output; outgoing: the
    /// peer sent `<proceed/>`). Write the output, run the TLS handshake, then call
    /// `tls_established`.
    StartTls,
    /// Incoming: is the peer's TLS certificate good for `domain` (RFC 6125)? Answer with
    /// [`S2sIncoming::certificate_checked`]; SASL EXTERNAL is offered only on yes.
    CheckCertificate { domain: String },
    /// Outgoing: the dialback key for this stream is needed: compute
    /// `dialback_key(secret, remote, local, stream_id)` and answer with
    /// [`S2sOutgoing::provide_dialback_key`].
    NeedDialbackKey {
        local: String,
        remote: String,
        stream_id: String,
    },
    /// Incoming (as receiving server): the peer claims `from` and sent `key` for stream
    /// `stream_id`; verify it with the authoritative server for `from` and answer with
    /// [`S2sIncoming::dialback_result`].
    DialbackRequest {
        from: String,
        to: String,
        key: String,
        stream_id: String,
    },
    /// Incoming (as authoritative server): is `key` right for stream `id` that `from` (the
    /// receiving server) got from our domain `to`? Answer with [`S2sIncoming::verify_result`].
    VerifyRequest {
        from: String,
        to: String,
        id: String,
        key: String,
    },
    /// Outgoing: the authoritative server answered a [`S2sOutgoing::send_dialback_verify`].
    /// `from` is its domain, `to` ours. A dialback error counts as not valid.
    VerifyResult {
        from: String,
        to: String,
        id: String,
        valid: bool,
    },
    /// Both roles: a (peer domain, local domain) pair is authenticated.
    Authenticated {
        peer: String,
        local: String,
        method: AuthMethod,
    },
    /// Outgoing: authentication failed or was impossible; the stream is closing.
    AuthFailed { reason: String },
    /// Outgoing: stanzas may now be sent; `stream_management` says whether acks will come.
    Ready { stream_management: bool },
    /// Incoming: a stanza from an authenticated peer, in `jabber:client`.
    Stanza(minidom::Element),
    /// Outgoing: the peer has handled every stanza with a sequence number up to `h`
    /// (XEP-0198 §4), counted with wrap-around at 2^32.
    Acked { h: u32 },
    /// Both roles: the peer sent `<stream:error/>` (RFC 6120 §4.9); [`Event::Closed`]
    /// follows.
    PeerStreamError {
        condition: String,
        text: Option<String>,
    },
    /// Both roles: the stream ended. `error` is the stream error we sent, if any. No more
    /// input is processed.
    Closed { error: Option<&'static str> },
}

/// Why [`S2sOutgoing::send_stanza`] refused a stanza. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Authentication (and stream management negotiation) has not finished; wait for
    /// [`Event::Ready`].
    #[error("the stream is not ready for stanzas")]
    NotReady,
    /// The stream is closed.
    #[error("the stream is closed")]
    Closed,
    /// Not a `jabber:client` message, presence or iq.
    #[error("not a jabber:client stanza")]
    NotAStanza,
    /// `from` is not at the stream's local domain, or `to` not at its remote domain: the
    /// peer would close the stream with `invalid-from` or `improper-addressing`.
    #[error("stanza addresses do not match the stream's domain pair")]
    WrongAddress,
    /// The element cannot be serialised as XML.
    #[error("stanza cannot be serialised")]
    Unserialisable(#[source] crate::xml::WriteError),
}

/// The dialback key of XEP-0185 §2: `HMAC-SHA256(hex(SHA256(secret)), "{receiving}
/// {originating} {stream_id}")`, in lower-case hex.
///
/// `receiving` is the peer we connect to, `originating` our domain, and `stream_id` the id
/// of the stream the receiving server opened. The same function checks a `db:verify` as the
/// authoritative server. `secret` is the server's dialback secret, never sent anywhere.
pub fn dialback_key(secret: &str, receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed = hex(&Sha256::digest(secret.as_bytes()));
    // HMAC takes a key of any length, so this never fails.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(hashed.as_bytes()) else {
        return String::new();
    };
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_key_matches_xep_0185_example() {
        // XEP-0185 §3: receiving xmpp.example.com, originating example.org.
        assert_eq!(
            dialback_key(
                "s3cr3tf0rd14lb4ck",
                "xmpp.example.com",
                "example.org",
                "D60000229F"
            ),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }
}
