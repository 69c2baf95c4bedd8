//! `is_valid_correlation_id` (ids come from reply records, URLs and headers):
//! never panics and accepts exactly 1 to 128 characters of `[A-Za-z0-9._:-]`,
//! compared with an independent check. An accepted id also makes Redis key
//! names with exactly one hash tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replyway_shared::record::is_valid_correlation_id;
use replyway_shared::store::Keys;

/// The rule, written independently: by characters, not bytes.
fn expected(id: &str) -> bool {
    let count = id.chars().count();
    (1..=128).contains(&count)
        && id
            .chars()
            .all(|c| matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | ':' | '-'))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for id in [&text[..], text.trim()] {
        let valid = is_valid_correlation_id(id);
        assert_eq!(valid, expected(id), "{id:?}");
        if valid {
            let key = Keys::new("rw").pending(id);
            assert_eq!(key.matches('{').count(), 1, "{key:?}");
            assert_eq!(key.matches('}').count(), 1, "{key:?}");
        }
    }
});
