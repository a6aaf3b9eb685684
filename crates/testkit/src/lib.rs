//! `outpost-testkit`: the client side of XMPP that Outpost's tests and its load generator
//! share, so that it exists once. Not published; a development dependency everywhere but in
//! `outpost-bench`.
//!
//! Always here, with no dependency on the server (all the load generator takes):
//! - [`scram`]: the client side of SCRAM-SHA-1 and SCRAM-SHA-256, `outpost-client`'s
//!   (written from RFC 5802 independently of the server's SASL code).
//! - [`tls`]: TLS client configurations: one that trusts a given certificate, and one that
//!   accepts any (for the load generator, which measures servers on loopback).
//!
//! With the `client` feature, for tests that drive a server over sockets:
//! - `Client`: a raw async XMPP client (STARTTLS or direct TLS, SASL PLAIN and SCRAM,
//!   bind, then raw XML out and parsed elements in), with the receive helpers and the ping
//!   barrier tests use to show that nothing else arrived.
//! - `blocking::Client`: the same client for tests that are not async, those that start
//!   `outpost serve` processes. It owns a current-thread runtime and blocks on it for each
//!   step, so those tests stay plain sequences of steps (processes, log files, `admin`
//!   commands) and yet parse what they receive instead of searching it for substrings.
//!   Making them `#[tokio::test]`s instead would have them block the runtime on
//!   `std::process` and file polling anyway.
//! - `dns`: a loopback DNS server with a zone the test fills, or answering NXDOMAIN to
//!   everything, so that no test asks a real DNS server.
//! - `relay::Relay`: a TCP relay to cut and heal, a WAN link between servers in one
//!   process.
//! - `poll_until` and `WAIT`: how long tests wait, and the one bounded poll, for what
//!   only the store shows.
//!
//! With the `server` feature (implies `client`): `TestServer`, a real
//! `outpost_server::ServerHandle` on 127.0.0.1:0 with a fresh SQLite or memory store and
//! a self-signed certificate, and waits on its link board.
//!
//! With `postgres` and `nats`: a real PostgreSQL per test process, and real NATS servers,
//! from Debian's packages.
//!
//! Deliberately not here: the load generator's byte-scanning framer and lean connection
//! (`outpost-bench` measures itself and must stay cheap, and it never depends on the
//! server, because it benchmarks other servers too); the harness that starts `outpost
//! serve` processes (it needs the binary Cargo builds only for `outpost`'s own tests); and
//! the sans-IO transcript helpers of `outpost-proto`'s tests, which use no sockets at all.

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod tls;

pub use outpost_client::scram;
pub use outpost_client::scram::{Scram, ScramClient};

#[cfg(feature = "client")]
pub mod blocking;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
pub mod dns;
#[cfg(feature = "client")]
pub mod relay;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "client")]
mod wait;

#[cfg(feature = "client")]
pub use client::*;
#[cfg(feature = "server")]
pub use server::{TestServer, wss_url};
#[cfg(feature = "client")]
pub use wait::{WAIT, poll_until};
