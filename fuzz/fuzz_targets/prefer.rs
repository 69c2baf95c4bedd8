//! The gateway's `Prefer` request header (`Prefer::from_headers`): each line of
//! the input is one `Prefer` header value (lines that are not valid header
//! values are dropped, as hyper would refuse them). Never panics; a `wait` or
//! `respond-async` it returns came from a header that names it.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use replyway_gateway::prefer::{PREFER, Prefer};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for value in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(&PREFER, v);
        }
    }
    // An unrelated header is ignored.
    headers.append("preference-applied", HeaderValue::from_static("wait=1"));
    if let Ok(prefer) = Prefer::from_headers(&headers) {
        let text: Vec<String> = headers
            .get_all(&PREFER)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
            .collect();
        if let Some(wait) = prefer.wait {
            assert!(text.iter().any(|t| t.contains("wait")));
            assert!(wait.as_secs() <= u64::from(u32::MAX));
        }
        if prefer.respond_async {
            assert!(text.iter().any(|t| t.contains("respond-async")));
        }
    }
});
