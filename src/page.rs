//! Keyset pagination, the one pager of every list: items sorted by a key
//! that ends with a unique id, a cursor holding the last key returned, a
//! limit and the total. Stable while items come and go: a page never
//! repeats or skips an item that stayed.

/// Where a page starts and how long it is.
#[derive(Debug, Clone)]
pub struct PageRequest<K> {
    pub limit: usize,
    /// The last key of the previous page.
    pub after: Option<K>,
    /// Keys run from the largest down.
    pub descending: bool,
}

/// One page, the cursor of the next (none on the last page) and how many
/// items the whole list has.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
    pub total: usize,
}

impl<T, K> Page<T, K> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U, K> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
            total: self.total,
        }
    }
}

/// Cuts one page out of `items`, which come sorted by `key` (from the
/// largest down when `req.descending`). Only the page's items are kept;
/// the rest are only counted.
pub fn paginate<T, K: Ord>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
    req: &PageRequest<K>,
) -> Page<T, K> {
    let mut total = 0;
    let mut page = Vec::with_capacity(req.limit.min(256));
    let mut more = false;
    for item in items {
        total += 1;
        let past = match &req.after {
            None => true,
            Some(a) if req.descending => key(&item) < *a,
            Some(a) => key(&item) > *a,
        };
        if !past {
            continue;
        }
        if page.len() < req.limit {
            page.push(item);
        } else {
            more = true;
        }
    }
    let next = if more { page.last().map(&key) } else { None };
    Page {
        items: page,
        next,
        total,
    }
}

/// One page of a `BTreeMap` kept in key order: seeks to the cursor instead
/// of walking up to it. `total` is the count of the whole (filtered) list,
/// which the caller knows or counts.
pub fn paginate_map<'a, K: Ord + Clone, V>(
    map: &'a std::collections::BTreeMap<K, V>,
    keep: impl Fn(&V) -> bool,
    total: usize,
    req: &PageRequest<K>,
) -> Page<&'a V, K> {
    use std::ops::Bound::{Excluded, Unbounded};
    let rows: Box<dyn Iterator<Item = (&K, &V)>> = match (&req.after, req.descending) {
        (None, false) => Box::new(map.iter()),
        (None, true) => Box::new(map.iter().rev()),
        (Some(a), false) => Box::new(map.range((Excluded(a), Unbounded))),
        (Some(a), true) => Box::new(map.range((Unbounded, Excluded(a))).rev()),
    };
    let mut items = Vec::with_capacity(req.limit.min(256));
    let mut last = None;
    let mut more = false;
    for (k, v) in rows.filter(|(_, v)| keep(v)) {
        if items.len() == req.limit {
            more = true;
            break;
        }
        items.push(v);
        last = Some(k);
    }
    Page {
        items,
        next: if more { last.cloned() } else { None },
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_in_both_directions_without_repeats_or_gaps() {
        let items: Vec<u32> = (0..5).collect();
        let req = |after, descending| PageRequest {
            limit: 2,
            after,
            descending,
        };
        let p1 = paginate(items.clone(), |i| *i, &req(None, false));
        assert_eq!(
            (p1.items.clone(), p1.next, p1.total),
            (vec![0, 1], Some(1), 5)
        );
        let p2 = paginate(items.clone(), |i| *i, &req(p1.next, false));
        assert_eq!(p2.items, vec![2, 3]);
        let p3 = paginate(items.clone(), |i| *i, &req(p2.next, false));
        assert_eq!((p3.items, p3.next), (vec![4], None));
        let rev: Vec<u32> = items.iter().rev().copied().collect();
        let d1 = paginate(rev.clone(), |i| *i, &req(None, true));
        assert_eq!(d1.items, vec![4, 3]);
        let d2 = paginate(rev, |i| *i, &req(d1.next, true));
        assert_eq!(d2.items, vec![2, 1]);
    }

    #[test]
    fn a_map_pages_like_a_list() {
        let map: std::collections::BTreeMap<u32, u32> = (0..7).map(|i| (i, i * 10)).collect();
        let odd = |v: &u32| (v / 10) % 2 == 1;
        for descending in [false, true] {
            let list: Vec<u32> = if descending {
                map.keys().rev().copied().collect()
            } else {
                map.keys().copied().collect()
            };
            let mut after = None;
            loop {
                let req = PageRequest {
                    limit: 2,
                    after,
                    descending,
                };
                let a = paginate(
                    list.iter().copied().filter(|k| odd(&(k * 10))),
                    |k| *k,
                    &req,
                );
                let b = paginate_map(&map, odd, 3, &req);
                let b_keys: Vec<u32> = b.items.iter().map(|v| *v / 10).collect();
                assert_eq!((a.items, a.next), (b_keys, b.next));
                if b.next.is_none() {
                    break;
                }
                after = b.next;
            }
        }
    }

    #[test]
    fn an_item_removed_between_pages_shifts_nothing() {
        let req = PageRequest {
            limit: 2,
            after: None,
            descending: false,
        };
        let p1 = paginate(vec![1, 2, 3, 4, 5], |i| *i, &req);
        let req = PageRequest {
            after: p1.next,
            ..req
        };
        // 2 is deleted and 0 inserted meanwhile: the next page still starts at 3.
        let p2 = paginate(vec![0, 1, 3, 4, 5], |i| *i, &req);
        assert_eq!(p2.items, vec![3, 4]);
    }
}
