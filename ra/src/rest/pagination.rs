//! Keyset pagination shared by the list endpoints: an opaque cursor naming the last row seen,
//! so pages stay stable while rows are inserted; limits and time parameters.

use std::time::UNIX_EPOCH;

use base64::Engine;

use super::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// The key of the last row of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    /// Tagged with the listing it belongs to, so a cursor from one endpoint is refused by
    /// another instead of silently skipping rows.
    pub fn encode(self, listing: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{listing}:{}", self.0))
    }

    pub fn decode(text: &str, listing: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request("cursor is not one this listing returned");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid())?;
        let raw = String::from_utf8(raw).map_err(|_| invalid())?;
        let (tag, key) = raw.split_once(':').ok_or_else(invalid)?;
        if tag != listing {
            return Err(invalid());
        }
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

/// An RFC 3339 UTC time parameter as Unix seconds.
pub fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            humantime::parse_rfc3339_weak(v)
                .map(|t| {
                    t.duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)
                })
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "{name}: {e} (expected RFC 3339 in UTC, e.g. 2026-11-26T10:00:00Z)"
                    ))
                })
        })
        .transpose()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_stay_in_their_listing() {
        let c = Cursor(12345);
        assert_eq!(Cursor::decode(&c.encode("audit"), "audit").unwrap(), c);
        assert!(Cursor::decode(&c.encode("audit"), "certificates").is_err());
        assert!(Cursor::decode("not base64!", "audit").is_err());
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
}
