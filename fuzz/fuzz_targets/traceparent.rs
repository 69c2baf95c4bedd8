//! W3C trace context from HTTP requests and records (`TraceContext::parse`,
//! `TraceContext::from_headers`). The input's first line is `traceparent`, the
//! second (if any) `tracestate`. On success: ids are not all zero, the
//! tracestate is bounded ASCII, and `traceparent()` parses back to the same
//! context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replyway_shared::trace::{MAX_TRACESTATE, TraceContext};

fn check(t: &TraceContext) {
    assert_ne!(t.trace_id, [0; 16]);
    assert_ne!(t.span_id, [0; 8]);
    if let Some(state) = &t.state {
        assert!(!state.is_empty() && state.len() <= MAX_TRACESTATE && state.is_ascii());
    }
    let parent = t.traceparent();
    assert_eq!(parent.len(), 55, "{parent:?}");
    assert_eq!(t.trace_id_hex().len(), 32);
    let again = TraceContext::parse(&parent, t.state.as_deref());
    assert_eq!(again.as_ref(), Some(t), "{parent:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let parent = lines.next().unwrap_or_default();
    let state = lines.next();
    // As HTTP header text.
    if let Ok(parent) = std::str::from_utf8(parent) {
        let state = state.and_then(|s| std::str::from_utf8(s).ok());
        if let Some(t) = TraceContext::parse(parent, state) {
            check(&t);
        }
    }
    // As record headers (bytes, maybe not UTF-8).
    if let Some(t) =
        TraceContext::from_headers([("traceparent", Some(parent)), ("tracestate", state)])
    {
        check(&t);
    }
});
