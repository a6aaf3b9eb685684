//! Runs the real `outpost` binary: its commands, and `outpost serve` processes that are
//! stopped, killed and restarted under clients ([`outpost_testkit::blocking::Client`]).
//! One binary, one module per area.

mod admin_links;
mod admin_replication;
mod chat;
mod cli;
mod cluster;
mod common;
mod durability;
mod federation_durability;
mod operator;
mod postgres;
