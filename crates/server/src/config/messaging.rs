//! The sections for what everyday clients expect of a server: the message archive and
//! stream management.

use serde::{Deserialize, Serialize};

/// `[archive]`: the message archive (XEP-0313), from which clients fetch history and
/// catch up after being away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Whether one-to-one messages are archived for their local ends (each user can still
    /// opt out with XEP-0441 preferences). With it off, a message accepted for an online
    /// recipient is durable only once the recipient's client acknowledges it. Default:
    /// `true`.
    pub enabled: bool,
    /// Days a message stays in the archive; `0` keeps messages until their owner removes
    /// them or the account. Default: `365`.
    pub retention_days: u32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            retention_days: 365,
        }
    }
}
