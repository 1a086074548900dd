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
    if let Ok(t) = text.parse::<Timestamp>() {
        return i64::try_from(t.as_nanosecond().div_euclid(1_000_000)).ok();
    }
    // jiff's `Timestamp` ends a day before the civil calendar does (it keeps room for any
    // offset), so `9999-12-31T00:00:00Z`, valid RFC 3339, is out of its range: read the
    // parts and count the milliseconds here.
    let pieces = jiff::fmt::temporal::Pieces::parse(text).ok()?;
    let (date, time, offset) = (pieces.date(), pieces.time()?, pieces.to_numeric_offset()?);
    let days = days_from_civil(
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    let secs = days * 86_400
        + i64::from(time.hour()) * 3600
        + i64::from(time.minute()) * 60
        + i64::from(time.second())
        - i64::from(offset.seconds());
    Some(secs * 1000 + i64::from(time.millisecond()))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    #[test]
    fn parses_the_whole_civil_range() {
        // Beyond jiff's Timestamp range, still valid RFC 3339.
        let end = parse_ms("9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(end, 253_402_300_799_999);
        assert_eq!(parse_ms("9999-12-31T00:00:00.000Z"), Some(end - 86_399_999));
        assert_eq!(
            parse_ms("9999-12-31T23:59:59.999-01:00"),
            Some(end + 3_600_000)
        );
        // The fallback agrees with jiff where both work.
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(
            days_from_civil(2026, 11, 22) * 86_400_000,
            parse_ms("2026-11-22T00:00:00Z").unwrap()
        );
        assert_eq!(parse_ms("9999-12-31"), None);
    }
}
