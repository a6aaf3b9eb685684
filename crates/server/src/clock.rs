//! The wall clock as the store and operators read it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A time as XEP-0082 writes it: UTC, to the millisecond (common clients parse at most
/// microseconds; milliseconds are plenty for ordering a human's messages).
pub(crate) fn format_ms(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&Rfc3339).unwrap_or_default()
}
