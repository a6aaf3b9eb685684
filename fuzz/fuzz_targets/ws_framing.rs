//! Feeds arbitrary input to the WebSocket framing (RFC 7395) both ways and checks what must
//! always hold: no panic; a received message is either refused or becomes exactly what the
//! machine may read (a header, the close, or one element that parses on its own); and
//! whatever the framing sends for a machine's bytes is one element per message.
//!
//! The input is split at NUL bytes into messages; the first byte chooses whether they go
//! in (received from a peer) or out (written by a machine, in pieces).

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::framing::WsFraming;
use outpost_proto::minidom::Element;
use outpost_proto::xml::Limits;

/// Small limits, so the fuzzer reaches them quickly.
const LIMITS: Limits = Limits {
    max_stanza_bytes: 4096,
    max_depth: 16,
};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut framing = WsFraming::new("jabber:server", LIMITS);
    if first & 1 == 0 {
        for piece in rest.split(|b| *b == 0) {
            let Ok(message) = std::str::from_utf8(piece) else {
                continue;
            };
            let Ok(bytes) = framing.inbound(message) else {
                continue;
            };
            let text = String::from_utf8(bytes).expect("the framing yields UTF-8");
            let is_header = text.starts_with("<stream:stream ");
            let is_close = text == "</stream:stream>";
            assert!(
                is_header || is_close || text == message,
                "an element is passed on as received"
            );
        }
    } else {
        for piece in rest.split(|b| *b == 0) {
            let Ok(messages) = framing.outbound(piece) else {
                return;
            };
            for m in messages {
                assert!(
                    m.parse::<Element>().is_ok(),
                    "every message is one element: {m}"
                );
            }
        }
    }
});
