//! Page requests and page tokens of every list. The cutting itself is
//! `crate::page` (one pager for every list); here the query's `limit` and
//! `page_token` are read, and the next token is written: an opaque base64
//! of the last key returned and the sort order it belongs to (a token of
//! another order is refused).

use std::collections::HashMap;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use crate::page::{Page, PageRequest};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Serialize, Deserialize)]
struct Cursor<K> {
    /// The sort order the token was issued for.
    s: String,
    /// The last key of the page.
    k: K,
}

/// `limit`: 1 to 200, 50 when absent.
pub fn limit(q: &HashMap<String, String>) -> ApiResult<usize> {
    match q.get("limit") {
        None => Ok(50),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=200).contains(l))
            .ok_or_else(|| ApiError::invalid(format!("Invalid limit {l:?}: use 1 to 200."))),
    }
}

/// The page the query asks for in the list sorted by `sort`.
pub fn request<K: DeserializeOwned>(
    q: &HashMap<String, String>,
    sort: &str,
    descending: bool,
) -> ApiResult<PageRequest<K>> {
    let limit = limit(q)?;
    let after = match q.get("page_token").or_else(|| q.get("pageToken")) {
        None => None,
        Some(tok) => {
            let bad = || ApiError::invalid("Invalid page_token.");
            let raw = B64.decode(tok).map_err(|_| bad())?;
            let c: Cursor<K> = serde_json::from_slice(&raw).map_err(|_| bad())?;
            if c.s != sort {
                return Err(ApiError::invalid(
                    "page_token was issued for another sort order.",
                ));
            }
            Some(c.k)
        }
    };
    Ok(PageRequest {
        limit,
        after,
        descending,
    })
}

/// The token of the page after one whose last key is `key`.
pub fn token<K: Serialize>(sort: &str, key: &K) -> String {
    let c = Cursor {
        s: sort.to_owned(),
        k: key,
    };
    B64.encode(serde_json::to_vec(&c).unwrap_or_default())
}

/// A page with its next token.
pub fn render<T, K: Serialize>(page: Page<T, K>, sort: &str) -> (Vec<T>, Option<String>, usize) {
    let next = page.next.as_ref().map(|k| token(sort, k));
    (page.items, next, page.total)
}

/// One page of `items` (already sorted by `key` as `sort` names it, from
/// the largest down when `desc`) for the query `q`: the items, the next
/// token, the total.
pub fn paginate<T, K: Ord + Serialize + DeserializeOwned>(
    items: Vec<T>,
    key: impl Fn(&T) -> K,
    sort: &str,
    desc: bool,
    q: &HashMap<String, String>,
) -> ApiResult<(Vec<T>, Option<String>, usize)> {
    let req = request(q, sort, desc)?;
    Ok(render(crate::page::paginate(items, key, &req), sort))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pages_in_both_directions_and_rejects_bad_tokens() {
        let items: Vec<(String, Uuid)> = (0..5)
            .map(|i| (format!("k{i}"), Uuid::from_u128(i)))
            .collect();
        let key = |i: &(String, Uuid)| i.clone();
        let (p1, next, total) =
            paginate(items.clone(), key, "k", false, &q(&[("limit", "2")])).unwrap();
        assert_eq!((p1.len(), total), (2, 5));
        let tok = next.unwrap();
        let (p2, _, _) = paginate(
            items.clone(),
            key,
            "k",
            false,
            &q(&[("limit", "2"), ("page_token", &tok)]),
        )
        .unwrap();
        assert_eq!(p2[0].0, "k2");
        // A token of the ascending order is refused by the descending one.
        let mut rev = items.clone();
        rev.reverse();
        assert!(paginate(rev.clone(), key, "-k", true, &q(&[("page_token", &tok)])).is_err());
        let (d1, next, _) = paginate(rev.clone(), key, "-k", true, &q(&[("limit", "3")])).unwrap();
        assert_eq!(d1[0].0, "k4");
        let (d2, last, _) = paginate(
            rev,
            key,
            "-k",
            true,
            &q(&[("limit", "3"), ("pageToken", &next.unwrap())]),
        )
        .unwrap();
        assert_eq!((d2.len(), last), (2, None));
        // Same direction, another key: refused too.
        assert!(paginate(
            items.clone(),
            key,
            "other",
            false,
            &q(&[("page_token", &tok)])
        )
        .is_err());
        assert!(paginate(items, key, "k", false, &q(&[("page_token", "%%")])).is_err());
        assert!(limit(&q(&[("limit", "0")])).is_err());
    }
}
