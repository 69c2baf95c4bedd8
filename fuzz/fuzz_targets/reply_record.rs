//! Reply records from Kafka (written by any service, in any language) →
//! `parse_reply`. Checks, on success, the documented guarantees: a valid
//! correlation id taken from the right place, a status in 200..=599, a body
//! within the bound; and that the reply's own headers (`Reply::record_headers`)
//! parse back to the same reply. Each input is read as a text record and as a
//! structured one (see `replyway_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replyway_fuzz::{Owned, OwnedList, borrow, read_back};
use replyway_shared::record::{ReplyError, header, is_valid_correlation_id, parse_reply};

/// Value bound of a text record without `@max`.
const DEFAULT_MAX: usize = 1 << 20;

/// The last non-null value of header `name`, as text (the parser already
/// refused a non-UTF-8 one when it succeeded).
fn last<'a>(list: &'a OwnedList, name: &str) -> Option<&'a str> {
    list.iter()
        .rev()
        .filter(|(n, _)| n == name)
        .find_map(|(_, v)| v.as_deref())
        .map(|v| std::str::from_utf8(v).expect("parse_reply accepted a non-UTF-8 header"))
}

fn check(record: &Owned) {
    let max_value = record.max_value.unwrap_or(DEFAULT_MAX);
    let list = &record.headers;
    let body = record.value.as_deref().unwrap_or_default();
    match parse_reply(
        record.key.as_deref(),
        borrow(list),
        record.value.as_deref(),
        max_value,
    ) {
        Ok((id, reply)) => {
            assert!(is_valid_correlation_id(&id), "accepted id {id:?}");
            assert!(
                (200..=599).contains(&reply.status),
                "status {}",
                reply.status
            );
            assert!(reply.body.len() <= max_value, "body over the bound");
            assert_eq!(&reply.body[..], body);

            // The id: our header, else Spring's, else the key.
            let expected = last(list, header::CORRELATION_ID)
                .or_else(|| last(list, header::SPRING_CORRELATION_ID))
                .map(str::to_owned)
                .or_else(|| {
                    record
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                });
            assert_eq!(Some(&id), expected.as_ref());

            let status = last(list, header::STATUS).map(|s| s.trim().parse::<u16>().ok());
            assert_eq!(status.unwrap_or(Some(200)), Some(reply.status));
            if let Some(ct) = last(list, header::CONTENT_TYPE) {
                assert_eq!(reply.content_type.as_deref(), Some(ct));
            }
            let headers: Vec<(String, String)> = list
                .iter()
                .filter_map(|(n, v)| {
                    let name = n.strip_prefix(header::HEADER_PREFIX)?;
                    let value = std::str::from_utf8(v.as_deref()?).ok()?;
                    Some((name.to_owned(), value.to_owned()))
                })
                .collect();
            assert_eq!(reply.headers, headers);

            // What a Rust service writes for this reply parses back to it (reply
            // header names are lower-cased on the way).
            let written = read_back(&reply.record_headers(&id));
            let (id2, reply2) = parse_reply(None, borrow(&written), Some(&reply.body), max_value)
                .expect("a reply's own record does not parse");
            let mut lowered = reply.clone();
            for (name, _) in &mut lowered.headers {
                *name = name.to_ascii_lowercase();
            }
            assert_eq!(id2, id);
            assert_eq!(reply2, lowered);
        }
        Err(ReplyError::TooLarge(len, max)) => {
            assert_eq!((len, max), (body.len(), max_value));
            assert!(len > max);
        }
        Err(e) => {
            assert!(!e.label().is_empty());
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for record in Owned::both(data) {
        check(&record);
    }
});
