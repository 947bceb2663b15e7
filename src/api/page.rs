//! Keyset pagination over an in-memory list: items sorted by (key, id), an
//! opaque `page_token` holding the last (key, id) returned, `limit`, and the
//! total. Stable while items come and go.

use std::collections::HashMap;

use base64::Engine as _;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One page of `items`, which must already be sorted by `key` (descending
/// when `desc`): the items after the cursor, the next cursor, the total.
pub fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> (String, Uuid),
    desc: bool,
    q: &HashMap<String, String>,
) -> ApiResult<(Vec<T>, Option<String>, usize)> {
    let limit = super::jobs::limit(q)?;
    let total = items.len();
    let after: Option<(String, Uuid)> = match q.get("page_token").or_else(|| q.get("pageToken")) {
        None => None,
        Some(t) => Some(
            B64.decode(t)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::invalid("Invalid page_token."))?,
        ),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| {
            after
                .as_ref()
                .is_none_or(|a| if desc { key(i) < *a } else { key(i) > *a })
        })
        .collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = more
        .then(|| {
            rest.last()
                .map(|l| B64.encode(serde_json::to_vec(&key(l)).unwrap_or_default()))
        })
        .flatten();
    Ok((rest, next, total))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (p1, next, total) = paginate(items.clone(), key, false, &q(&[("limit", "2")])).unwrap();
        assert_eq!((p1.len(), total), (2, 5));
        let tok = next.unwrap();
        let (p2, _, _) = paginate(
            items.clone(),
            key,
            false,
            &q(&[("limit", "2"), ("page_token", &tok)]),
        )
        .unwrap();
        assert_eq!(p2[0].0, "k2");
        let mut rev = items.clone();
        rev.reverse();
        let (d1, next, _) = paginate(rev.clone(), key, true, &q(&[("limit", "3")])).unwrap();
        assert_eq!(d1[0].0, "k4");
        let (d2, last, _) = paginate(
            rev,
            key,
            true,
            &q(&[("limit", "3"), ("pageToken", &next.unwrap())]),
        )
        .unwrap();
        assert_eq!((d2.len(), last), (2, None));
        assert!(paginate(items, key, false, &q(&[("page_token", "%%")])).is_err());
    }
}
