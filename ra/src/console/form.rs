//! A listing page's query string as its form shows it: a browser sends every field of a GET
//! form, empty or not, where the API reads an empty parameter as a filter for "". The pairs
//! that were filled in are what the listing is asked for, what the form shows again, and what
//! the next-page and export links carry.

use std::future::Future;

use serde::de::DeserializeOwned;

use super::page::Rejection;
use crate::rest::ApiError;

/// What a listing page shows: a page of rows and the next page's query string, or why the API
/// refused the filter (shown above the form, which keeps what was typed).
#[derive(Debug)]
pub struct Listing<T> {
    pub rows: Vec<T>,
    pub next: Option<String>,
    pub error: Option<String>,
}

/// The non-empty parameters of a query string, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormValues(Vec<(String, String)>);

impl FormValues {
    /// Parses `raw` (without the `?`), trimming values and dropping empty ones.
    pub fn parse(raw: Option<&str>) -> Result<Self, Rejection> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| Rejection::BadRequest(format!("the query string does not parse: {e}")))?;
        Ok(Self(
            pairs
                .into_iter()
                .map(|(name, value)| (name, value.trim().to_string()))
                .filter(|(_, value)| !value.is_empty())
                .collect(),
        ))
    }

    /// The value of `name` as the form shows it ("" when not given).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The parameters, less `without`, plus `extra`, as a query string.
    pub fn query(&self, without: &[&str], extra: &[(&str, &str)]) -> String {
        let pairs: Vec<(&str, &str)> = self
            .0
            .iter()
            .filter(|(n, _)| !without.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(extra.iter().copied())
            .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    /// The parameters, less `without`, as the API's query type (whose own checks apply).
    pub fn to_query<T: DeserializeOwned>(&self, without: &[&str]) -> Result<T, String> {
        serde_urlencoded::from_str(&self.query(without, &[])).map_err(|e| e.to_string())
    }
}

impl FormValues {
    /// Runs `fetch` (rows and the next cursor) on the API's query type `Q` read from the form.
    /// A filter the API refuses (4xx) is the listing's error; any other failure is the page's.
    pub async fn listing<Q, T, Fut>(
        &self,
        fetch: impl FnOnce(Q) -> Fut,
    ) -> Result<Listing<T>, Rejection>
    where
        Q: DeserializeOwned,
        Fut: Future<Output = Result<(Vec<T>, Option<String>), ApiError>>,
    {
        let fetched = match self.to_query::<Q>(&[]) {
            Ok(query) => fetch(query).await,
            Err(message) => Err(ApiError::bad_request(message)),
        };
        match fetched {
            Ok((rows, cursor)) => Ok(Listing {
                rows,
                next: cursor.map(|cursor| self.query(&["cursor"], &[("cursor", &cursor)])),
                error: None,
            }),
            Err(error) if error.status().is_client_error() => Ok(Listing {
                rows: Vec::new(),
                next: None,
                error: Some(error.message().to_string()),
            }),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Listing {
        spiffe_id: Option<String>,
        namespace: Option<String>,
        cursor: Option<String>,
    }

    #[test]
    fn empty_fields_are_not_filters() {
        let form = FormValues::parse(Some(
            "spiffe_id=spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%2F*&namespace=+&cursor=",
        ))
        .unwrap();
        assert_eq!(form.get("spiffe_id"), "spiffe://cluster.local/ns/a/*");
        assert_eq!(form.get("namespace"), "");
        let listing: Listing = form.to_query(&[]).unwrap();
        assert_eq!(
            listing,
            Listing {
                spiffe_id: Some("spiffe://cluster.local/ns/a/*".into()),
                namespace: None,
                cursor: None,
            }
        );
        assert_eq!(
            form.query(&["cursor"], &[("cursor", "certificates.7")]),
            "spiffe_id=spiffe%3A%2F%2Fcluster.local%2Fns%2Fa%2F*&cursor=certificates.7"
        );
        let unknown = FormValues::parse(Some("colour=red")).unwrap();
        assert!(unknown
            .to_query::<Listing>(&[])
            .unwrap_err()
            .contains("colour"));
        assert_eq!(FormValues::parse(None).unwrap(), FormValues::default());
    }
}
