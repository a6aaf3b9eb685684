//! Sans-IO XMPP for Outpost: the XML stream reader with its limits, stanza helpers, SASL
//! (SCRAM-SHA-1, SCRAM-SHA-256, PLAIN), the client-to-server negotiation state machine,
//! and the server-to-server state machines (STARTTLS, XEP-0220 dialback, SASL EXTERNAL,
//! XEP-0198 acknowledgements) that the federation layer will drive, and the RFC 7395
//! WebSocket framing that carries those streams in messages.
//!
//! Nothing here does I/O, reads a clock or the environment, or draws random numbers: the
//! caller feeds bytes in, takes bytes and events out, and supplies nonces and stream ids.
//! Nothing a peer sends can make this crate panic; every failure becomes a stream, SASL or
//! stanza error.
//!
//! Not here: storage, routing, presence logic (the server's), and connections.

pub mod c2s;
pub mod component;
pub mod forms;
pub mod framing;
pub mod machine;
pub mod muc;
pub mod s2s;
pub mod sasl;
pub mod sm;
pub mod socks5;
pub mod stanza;
pub mod xml;

pub use machine::StreamMachine;

pub use jid;
pub use minidom;
