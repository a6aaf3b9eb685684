//! `outpost-bench`: a lean XMPP client-to-server load generator, used to compare Outpost
//! with Prosody and ejabberd on the same machine (see `bench/compare.sh` and
//! `BENCHMARKS.md`).
//!
//! It speaks just enough of RFC 6120/6121 over TCP (STARTTLS optional): stream headers,
//! SASL PLAIN and SCRAM-SHA-1, resource binding, presence, subscriptions, chat messages,
//! XEP-0199 pings as ordering barriers, and XEP-0077 registration for provisioning. To stay
//! cheap per connection and per message it frames the server's stream with a byte scanner
//! ([`frame`]) instead of an XML parser, keeps no task per idle connection, and reports its
//! own CPU next to every figure so that a reader can check it was not the bottleneck.
//!
//! Beyond the scenarios of issue 3: a multi-user chat room ([`muc`]), a check that servers
//! archive ([`mam`]), and the ceiling ([`relay`]): a relay with no XMPP that the generator's
//! `--raw` mode drives with the same stanza bytes over the same TLS. With `--ws PATH` every
//! connection is XMPP over WebSocket (RFC 7395, [`ws`]) instead of TCP; [`rest`] drives the
//! HTTP API (`/api/v1`): message sends per second and an event-stream fan-out.
//!
//! Not here: correctness testing of servers (the integration and interop suites do that)
//! and any target other than loopback.

pub mod conn;
pub mod frame;
pub mod mam;
pub mod metrics;
pub mod muc;
pub mod relay;
pub mod rest;
pub mod scenarios;
pub mod scram;
pub mod ws;

pub use conn::{Conn, Mech, Target};
