//! The single timestamp format of the wire: RFC 3339 UTC with exactly three fractional
//! digits and `Z` (`2026-11-22T10:00:00.123Z`). Internally time is milliseconds since the
//! Unix epoch (`i64`), which is what stores index and compare.

use jiff::Timestamp;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Formats epoch milliseconds as the wire timestamp.
pub fn format_ms(ms: i64) -> String {
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Parses any RFC 3339 timestamp (any offset, any precision) into epoch milliseconds,
/// truncating sub-millisecond digits. `None` when it is not a valid timestamp.
pub fn parse_ms(text: &str) -> Option<i64> {
    if text.len() > 64 {
        return None;
    }
    // Floor, not `as_millisecond` (which rounds towards zero): cutting the digits of
    // `1969-12-31T23:59:59.9995Z` must give …59.999, not the later 00:00:00.000.
    let ms = text
        .parse::<Timestamp>()
        .ok()?
        .as_nanosecond()
        .div_euclid(1_000_000);
    i64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_three_digits_and_z() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn parses_offsets_and_round_trips() {
        let ms = parse_ms("2026-11-22T10:00:00.123Z").unwrap();
        assert_eq!(format_ms(ms), "2026-11-22T10:00:00.123Z");
        assert_eq!(
            parse_ms("2026-11-22T11:00:00+01:00"),
            parse_ms("2026-11-22T10:00:00Z")
        );
        assert_eq!(parse_ms("yesterday"), None);
        // Sub-millisecond digits are cut, also before 1970 (found by a property test).
        assert_eq!(parse_ms("1969-12-31T23:59:59.9991Z"), Some(-1));
        assert_eq!(parse_ms("1970-01-01T00:00:00.0009Z"), Some(0));
    }
}
