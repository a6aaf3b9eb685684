//! Feeds arbitrary bytes to the XML stream reader in chunks whose size comes from the first
//! byte, and checks what must always hold: no panic, nothing left unparsed when the reader asks
//! for more, and every stanza it yields can be written and read back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_proto::minidom::Element;
use outpost_proto::xml::{Limits, StreamReader, XmlEvent, write_stanza};

/// Small limits, so the fuzzer reaches them quickly.
const LIMITS: Limits = Limits {
    max_stanza_bytes: 4096,
    max_depth: 16,
};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams'>";

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // 0 feeds everything at once; otherwise chunks of 1..=255 bytes.
    let chunk = if first == 0 {
        rest.len().max(1)
    } else {
        usize::from(first)
    };
    let mut reader = StreamReader::new(LIMITS);
    for piece in rest.chunks(chunk) {
        reader.feed(piece);
        loop {
            match reader.next() {
                Ok(Some(XmlEvent::Stanza(el))) => roundtrip(&el),
                Ok(Some(_)) => {}
                Ok(None) => {
                    assert_eq!(reader.buffered_len(), 0, "bytes left unparsed");
                    break;
                }
                Err(e) => {
                    let _ = e.condition();
                    assert_eq!(reader.next(), Err(e), "errors must be sticky");
                    return;
                }
            }
        }
    }
});

/// A parsed stanza must serialise, and parse back to an equal element.
fn roundtrip(el: &Element) {
    let mut out = HEADER.to_vec();
    write_stanza(el, &mut out).expect("a parsed stanza must serialise");
    // Escaping and namespace declarations can make the output longer than the input.
    let mut reader = StreamReader::new(Limits {
        max_stanza_bytes: 1 << 20,
        ..LIMITS
    });
    reader.feed(&out);
    assert!(matches!(reader.next(), Ok(Some(XmlEvent::StreamOpen(_)))));
    match reader.next() {
        Ok(Some(XmlEvent::Stanza(again))) => assert_eq!(&again, el),
        other => panic!(
            "written stanza did not parse back: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
}
