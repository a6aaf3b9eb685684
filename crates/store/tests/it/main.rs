//! Integration tests of the store through its public API, in one binary: the battery that
//! every backend passes, one module per area.

mod archive;
mod battery;
mod copy;
mod muc;
mod pep;
mod postgres;
mod push;
mod replication;
mod tokens;
mod upload;
