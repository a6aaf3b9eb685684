//! What the stream machines ([`crate::c2s::C2sStream`], [`crate::s2s::S2sIncoming`],
//! [`crate::s2s::S2sOutgoing`]) have in common: bytes in, bytes and events out.
//!
//! The connection task feeds what the peer sent to [`StreamMachine::handle_input`], writes
//! what [`StreamMachine::take_output`] returns, and acts on each event from
//! [`StreamMachine::poll_event`]. Each machine keeps its buffers in one [`Wire`] and says
//! how it processes input; the rest is written once, here.

use std::collections::VecDeque;

use crate::xml::{Limits, StreamReader};

/// The buffers of one stream machine: the reader of the peer's XML, the bytes to write to
/// the peer, and the events for the server. Its fields are the machines' own.
pub struct Wire<E> {
    pub(crate) reader: StreamReader,
    pub(crate) out: Vec<u8>,
    pub(crate) events: VecDeque<E>,
}

impl<E> Wire<E> {
    pub(crate) fn new(limits: Limits) -> Wire<E> {
        Wire {
            reader: StreamReader::new(limits),
            out: Vec::new(),
            events: VecDeque::new(),
        }
    }
}

/// A sans-IO stream state machine. Callers implement nothing: the machines of this crate do.
pub trait StreamMachine {
    /// What the machine tells the server.
    type Event;

    /// The machine's buffers.
    #[doc(hidden)]
    fn wire(&self) -> &Wire<Self::Event>;

    #[doc(hidden)]
    fn wire_mut(&mut self) -> &mut Wire<Self::Event>;

    /// Processes as much buffered input as the machine's state allows.
    #[doc(hidden)]
    fn process(&mut self);

    /// Whether the stream has ended; no more input is processed then.
    fn is_closed(&self) -> bool;

    /// Feeds bytes from the peer and processes as much as the current state allows.
    fn handle_input(&mut self, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.wire_mut().reader.feed(data);
        self.process();
    }

    /// Bytes to write to the peer, in order. Empty when there is nothing to send.
    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wire_mut().out)
    }

    fn has_output(&self) -> bool {
        !self.wire().out.is_empty()
    }

    /// The next event, oldest first.
    fn poll_event(&mut self) -> Option<Self::Event> {
        let events = &mut self.wire_mut().events;
        let event = events.pop_front();
        if event.is_none() && events.capacity() > 0 {
            // Drained: an idle connection keeps no event queue.
            *events = VecDeque::new();
        }
        event
    }

    /// Whether [`StreamMachine::poll_event`] would return an event, without taking it.
    fn has_event(&self) -> bool {
        !self.wire().events.is_empty()
    }
}

/// Implements [`StreamMachine`] for a machine whose buffers are its `wire` field, whose
/// inherent `process` method consumes input, and which is closed in `Phase::Closed` (each
/// machine's own `Phase`, resolved where the macro is used).
macro_rules! stream_machine {
    ($machine:ty, $event:ty) => {
        impl $crate::machine::StreamMachine for $machine {
            type Event = $event;

            fn wire(&self) -> &$crate::machine::Wire<$event> {
                &self.wire
            }

            fn wire_mut(&mut self) -> &mut $crate::machine::Wire<$event> {
                &mut self.wire
            }

            fn process(&mut self) {
                <$machine>::process(self);
            }

            fn is_closed(&self) -> bool {
                self.phase == Phase::Closed
            }
        }
    };
}
pub(crate) use stream_machine;
