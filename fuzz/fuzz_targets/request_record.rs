//! Request records from Kafka (as a backend service receives them) →
//! `Request::parse`. On success the request is written again with
//! `Request::record_headers` (what the gateway and the `Requester` produce) and
//! parsed back: every field must survive the round trip, also with Spring's
//! headers added. Each input is read as a text record and as a structured one
//! (see `replyway_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replyway_fuzz::{Owned, borrow, read_back};
use replyway_shared::record::{Request, RequestError};

fn same(a: &Request, b: &Request) {
    assert_eq!(a.correlation_id, b.correlation_id);
    assert_eq!(a.reply_to, b.reply_to);
    assert_eq!(a.deadline, b.deadline);
    assert_eq!(a.content_type, b.content_type);
    assert_eq!(a.method, b.method);
    assert_eq!(a.path, b.path);
    assert_eq!(a.params, b.params);
    assert_eq!(a.headers, b.headers);
    assert_eq!(a.traceparent, b.traceparent);
    assert_eq!(a.tracestate, b.tracestate);
    assert_eq!(a.client_id, b.client_id);
    assert_eq!(a.key, b.key);
    assert_eq!(a.body, b.body);
}

fn check(record: &Owned) {
    let parsed = Request::parse(
        record.key.as_deref(),
        borrow(&record.headers),
        record.value.as_deref(),
    );
    match parsed {
        Ok(request) => {
            assert!(!request.correlation_id.is_empty());
            assert!(!request.reply_to.is_empty());
            assert_eq!(
                &request.body[..],
                record.value.as_deref().unwrap_or_default()
            );
            let key = request.key.as_deref();
            let written = read_back(&request.record_headers());
            let again = Request::parse(key, borrow(&written), Some(&request.body))
                .expect("a request's own record does not parse");
            same(&request, &again);
            let spring = read_back(&request.spring_headers(request.record_headers()));
            let again = Request::parse(key, borrow(&spring), Some(&request.body))
                .expect("a request with Spring headers does not parse");
            same(&request, &again);
        }
        Err(RequestError::Missing(_) | RequestError::Malformed(_)) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    for record in Owned::both(data) {
        check(&record);
    }
});
