//! Integration tests of the store through its public API. One binary; the battery is its
//! one module so far.

mod battery;
