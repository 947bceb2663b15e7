//! Wall-clock times as the API shows them: RFC 3339 in UTC, whole seconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Now, as RFC 3339.
pub fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// RFC 3339 time `secs` seconds ago.
pub fn ago(secs: u64) -> String {
    rfc3339(OffsetDateTime::now_utc() - time::Duration::seconds(secs as i64))
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 of a time given in seconds since the epoch.
pub fn from_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .map(rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_whole_utc_seconds() {
        assert!(now().ends_with('Z'));
        assert!(!now().contains('.'));
        assert!(ago(3600) < now());
        assert_eq!(from_unix(0), "1970-01-01T00:00:00Z");
    }
}
