//! Keyset pagination shared by the list endpoints: a cursor naming the last row seen, so pages
//! stay stable while rows are inserted; limits and time parameters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// The key of the last row of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    /// `<listing>.<key>`: tagged with the listing it belongs to, so a cursor from one endpoint
    /// is refused by another instead of silently skipping rows. Plain enough that the API
    /// document can say exactly which cursors are well formed (`^<listing>\.[0-9]{1,18}$`),
    /// so every cursor it admits is one the server takes.
    pub fn encode(self, listing: &str) -> String {
        format!("{listing}.{}", self.0)
    }

    pub fn decode(text: &str, listing: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request("cursor is not one this listing returned");
        let key = text
            .strip_prefix(listing)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(invalid)?;
        key.parse().map(Cursor).map_err(|_| invalid())
    }
}

pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {n}"
        ))),
    }
}

/// An RFC 3339 time parameter as Unix seconds.
pub fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            parse_rfc3339(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name}: {v:?} is not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)"
                ))
            })
        })
        .transpose()
}

/// Unix seconds of an RFC 3339 `date-time` (any offset, any year from 0000, fractions of a
/// second dropped), as the API document promises. For people typing at `meshca admin`, a
/// space may stand for the `T` and a missing offset means UTC.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let number = |digits: &str| -> Option<i64> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let b = text.as_bytes();
    if b.len() < 19
        || !b[..19].is_ascii()
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (
        number(&text[0..4])?,
        number(&text[5..7])?,
        number(&text[8..10])?,
    );
    let (hour, minute, second) = (
        number(&text[11..13])?,
        number(&text[14..16])?,
        number(&text[17..19])?,
    );
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (hours, minutes) = rest[1..].split_once(':')?;
            let (hours, minutes) = (number(hours)?, number(minutes)?);
            if rest.len() != 6 || hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 3600 + minutes * 60)
        }
    };
    // A leap second counts as the last second of its minute.
    let seconds = hour * 3600 + minute * 60 + second.min(59);
    Some(days_from_civil(year, month, day) * 86_400 + seconds - offset)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Rows fetched with `limit + 1`: the page, and the cursor for the next one if there is more.
pub fn split_page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = limit as usize;
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(cursor_of);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// A time as the API writes it: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn unix_to_rfc3339(secs: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_stay_in_their_listing() {
        let c = Cursor(12345);
        assert_eq!(c.encode("audit"), "audit.12345");
        assert_eq!(Cursor::decode(&c.encode("audit"), "audit").unwrap(), c);
        assert!(Cursor::decode(&c.encode("audit"), "certificates").is_err());
        for bad in [
            "",
            "audit",
            "audit.",
            "audit.-1",
            "audit.+1",
            "audit.1 ",
            "auditx.1",
            "YXVkaXQ6MTIzNDU",
        ] {
            assert!(Cursor::decode(bad, "audit").is_err(), "{bad:?}");
        }
        // The largest key the documented pattern admits.
        assert_eq!(
            Cursor::decode("audit.999999999999999999", "audit").unwrap(),
            Cursor(999_999_999_999_999_999)
        );
    }

    #[test]
    fn limits_and_pages() {
        assert_eq!(limit(None).unwrap(), 100);
        assert_eq!(limit(Some(1000)).unwrap(), 1000);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(1001)).is_err());
        let (page, next) = split_page(vec![5, 4, 3], 2, |n| n.to_string());
        assert_eq!((page, next), (vec![5, 4], Some("4".to_string())));
        let (page, next) = split_page(vec![5, 4], 2, |n| n.to_string());
        assert_eq!((page, next), (vec![5, 4], None));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            time_param("since", Some("2026-11-26T00:00:00Z")).unwrap(),
            Some(1_795_651_200)
        );
        assert!(time_param("since", Some("yesterday")).is_err());
        assert_eq!(time_param("since", None).unwrap(), None);
    }

    #[test]
    fn rfc3339_offsets_fractions_and_years_before_1970() {
        let day = 1_795_651_200;
        for (text, expected) in [
            ("2026-11-26T00:00:00Z", day),
            ("2026-11-26t00:00:00z", day),
            ("2026-11-26 00:00:00", day),
            ("2026-11-26T00:00:00.123456Z", day),
            ("2026-11-26T01:30:00+01:30", day),
            ("2026-11-25T19:00:00-05:00", day),
            ("2026-11-26T00:00:00+00:00", day),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59Z", -1),
            ("0000-01-01T00:00:00Z", -62_167_219_200),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
            ("2024-02-29T00:00:00Z", 1_709_164_800),
            ("2016-12-31T23:59:60Z", 1_483_228_799),
        ] {
            assert_eq!(parse_rfc3339(text), Some(expected), "{text}");
        }
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T00:60:00Z",
            "2026-11-26T00:00:00.Z",
            "2026-11-26T00:00:00+1:00",
            "2026-11-26T00:00:00+01:00:00",
            "2026-11-26T00:00:00+24:00",
            "2026-11-26T00:00:00 Z",
            "+026-11-26T00:00:00Z",
            "2026-11-26T00:00:00Zjunk",
            "2026-11-26T00:00:0\u{e9}",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
