//! Protocol transcripts for the sans-IO state machines: bytes in, events and bytes out, no
//! sockets and no clock. One binary, one module per machine.

mod c2s_transcripts;
mod muc_transcripts;
mod s2s_transcripts;
mod sm_transcripts;
mod ws_framing;
