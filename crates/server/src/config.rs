//! Typed configuration: see crates/server/src/config.rs (being written).
