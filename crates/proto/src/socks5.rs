//! The server side of the part of SOCKS5 (RFC 1928) that XEP-0065 bytestreams use, sans
//! IO: no authentication, one CONNECT to a "domain name" that is the 40 hex digits of
//! SHA-1(stream id + initiator JID + target JID), port 0 (XEP-0065 §5.3.2). Anything else
//! is refused.
//!
//! A dependency for three fixed-size messages would have brought a second copy of two
//! crates into the tree; this is the whole of what a bytestream proxy needs.

use sha1::Digest as _;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const NO_ACCEPTABLE: u8 = 0xff;
const CONNECT: u8 = 1;
const DOMAIN: u8 = 3;
const SUCCEEDED: u8 = 0;
const NOT_ALLOWED: u8 = 2;
const COMMAND_NOT_SUPPORTED: u8 = 7;

/// Where the handshake stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    NeedMore,
    /// The client asked to connect to this address (the bytestream's hash); the reply is
    /// in the output, and what follows on the socket is the stream's data.
    Connect(String),
    /// The client asked for something a bytestream proxy does not do; the refusal is in
    /// the output and the connection should close.
    Refused,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Request,
    Done,
}

/// One client's handshake.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            state: State::Greeting,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }
}

impl Handshake {
    /// Feeds bytes from the client. Bytes past the request are left to the caller: a
    /// client may send none before the reply, so there are none in practice.
    pub fn handle_input(&mut self, data: &[u8]) -> Progress {
        self.buf.extend_from_slice(data);
        loop {
            match self.state {
                State::Greeting => match self.greeting() {
                    Some(true) => self.state = State::Request,
                    Some(false) => return self.refuse(),
                    None => return Progress::NeedMore,
                },
                State::Request => return self.request(),
                State::Done => return Progress::Refused,
            }
        }
    }

    /// Bytes to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// `Some(true)` when the greeting offered "no authentication" (and the reply is
    /// written), `Some(false)` when it did not or is not SOCKS5.
    fn greeting(&mut self) -> Option<bool> {
        let [version, n, ..] = self.buf[..] else {
            return None;
        };
        if version != VERSION {
            return Some(false);
        }
        let len = 2 + usize::from(n);
        let methods = self.buf.get(2..len)?;
        let ok = methods.contains(&NO_AUTH);
        self.out
            .extend_from_slice(&[VERSION, if ok { NO_AUTH } else { NO_ACCEPTABLE }]);
        self.buf.drain(..len);
        Some(ok)
    }

    fn request(&mut self) -> Progress {
        let [version, cmd, _rsv, atyp, len, ..] = self.buf[..] else {
            return Progress::NeedMore;
        };
        if version != VERSION || atyp != DOMAIN {
            return self.reply_and_refuse(NOT_ALLOWED);
        }
        if cmd != CONNECT {
            return self.reply_and_refuse(COMMAND_NOT_SUPPORTED);
        }
        let end = 5 + usize::from(len) + 2;
        if self.buf.len() < end {
            return Progress::NeedMore;
        }
        let addr = &self.buf[5..end - 2];
        let valid = addr.len() == 40 && addr.iter().all(u8::is_ascii_hexdigit);
        if !valid {
            return self.reply_and_refuse(NOT_ALLOWED);
        }
        let addr = String::from_utf8_lossy(addr).to_ascii_lowercase();
        self.reply(SUCCEEDED, addr.as_bytes());
        self.buf.drain(..end);
        self.state = State::Done;
        Progress::Connect(addr)
    }

    fn reply(&mut self, code: u8, addr: &[u8]) {
        self.out.extend_from_slice(&[VERSION, code, 0, DOMAIN]);
        self.out.push(u8::try_from(addr.len()).unwrap_or(0));
        self.out.extend_from_slice(addr);
        self.out.extend_from_slice(&[0, 0]);
    }

    fn reply_and_refuse(&mut self, code: u8) -> Progress {
        self.reply(code, b"");
        self.refuse()
    }

    fn refuse(&mut self) -> Progress {
        self.state = State::Done;
        Progress::Refused
    }
}

/// The address both parties of a bytestream connect to (XEP-0065 §5.3.2).
pub fn stream_hash(sid: &str, initiator: &str, target: &str) -> String {
    let digest = sha1::Sha1::digest(format!("{sid}{initiator}{target}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(addr: &[u8], cmd: u8) -> Vec<u8> {
        let mut r = vec![5, cmd, 0, 3, addr.len() as u8];
        r.extend_from_slice(addr);
        r.extend_from_slice(&[0, 0]);
        r
    }

    #[test]
    fn a_bytestream_connect_goes_through_byte_by_byte() {
        let hash = stream_hash("sid", "a@x/1", "b@y/2");
        assert_eq!(hash.len(), 40);
        let mut h = Handshake::default();
        let mut bytes = vec![5, 2, 2, 0];
        bytes.extend(request(hash.as_bytes(), 1));
        let mut last = Progress::NeedMore;
        for b in &bytes {
            last = h.handle_input(std::slice::from_ref(b));
            if last != Progress::NeedMore {
                break;
            }
        }
        assert_eq!(last, Progress::Connect(hash.clone()));
        let out = h.take_output();
        assert_eq!(&out[..2], &[5, 0]);
        assert_eq!(&out[2..7], &[5, 0, 0, 3, 40]);
        assert_eq!(&out[7..47], hash.as_bytes());
    }

    #[test]
    fn everything_else_is_refused() {
        // Username/password only.
        let mut h = Handshake::default();
        assert_eq!(h.handle_input(&[5, 1, 2]), Progress::Refused);
        assert_eq!(h.take_output(), [5, 0xff]);
        // SOCKS4.
        assert_eq!(
            Handshake::default().handle_input(&[4, 1, 0, 80]),
            Progress::Refused
        );
        // BIND, an IP address, a name that is not a hash.
        for (req, code) in [
            (request(&[b'a'; 40], 2), 7),
            (vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 80], 2),
            (request(b"example.com", 1), 2),
        ] {
            let mut h = Handshake::default();
            assert_eq!(h.handle_input(&[5, 1, 0]), Progress::NeedMore);
            h.take_output();
            assert_eq!(h.handle_input(&req), Progress::Refused);
            assert_eq!(h.take_output()[1], code);
        }
    }
}
