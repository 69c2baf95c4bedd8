//! W3C trace context across the hops of a request: HTTP client → gateway →
//! request record → service (`Responder`) → reply record → collector.
//!
//! Every hop opens a `tracing` span whose parent is the context it received
//! and passes its own context on (`traceparent`, `tracestate`). When
//! OpenTelemetry export is configured ([`crate::telemetry`]) the span ids are
//! those of the exported spans; when it is not, fresh random ids are used, so
//! the trace id still travels end to end.
//!
//! Reading and writing the two headers is OpenTelemetry's
//! [`TraceContextPropagator`]; this module gives it its carriers: the headers
//! of an HTTP request ([`HttpHeaders`]), the headers of a Kafka record
//! ([`RecordHeaders`] to read, [`RecordHeadersMut`] to write) and the two
//! values as the record contract keeps them ([`TraceFields`]).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header that carries the trace and parent span ids (W3C Trace Context).
const TRACEPARENT: &str = "traceparent";
/// Header that carries vendors' trace state (W3C Trace Context).
const TRACESTATE: &str = "tracestate";

/// A W3C trace context: what `traceparent` and `tracestate` carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes of the sending span, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags: bit 0, sampled (the only flag W3C version 00 defines; the
    /// propagator clears the others).
    pub flags: u8,
    /// `tracestate` as the propagator normalised it (members trimmed, empty
    /// ones dropped); `None` when absent or invalid.
    pub state: Option<String>,
}

/// Longest `tracestate` passed on (the W3C limit is 32 members of ≤ 256 chars).
pub const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    /// Reads the trace context that `carrier` holds. `None` when it holds
    /// none or a malformed one: the hop then starts a new trace, as the W3C
    /// recommendation says.
    pub fn extract(carrier: &dyn Extractor) -> Option<Self> {
        if !carrier.get(TRACEPARENT).is_some_and(has_fixed_widths) {
            return None;
        }
        // Onto an empty context, not the current one: a rejected header must
        // not come back as the caller's own span.
        let context = TraceContextPropagator::new()
            .extract_with_context(&opentelemetry::Context::new(), carrier);
        let span = context.span();
        Self::from_otel(span.span_context())
    }

    /// Writes `traceparent` (and `tracestate`, when there is one) to `carrier`.
    pub fn inject(&self, carrier: &mut dyn Injector) {
        let context = opentelemetry::Context::new().with_remote_span_context(self.to_otel());
        TraceContextPropagator::new().inject_context(&context, &mut SkipEmpty(carrier));
    }

    /// Parses `traceparent` (version 00, or a later version's first four
    /// fields) and an optional `tracestate`. `None` when malformed.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        Self::extract(&TraceFields {
            traceparent: Some(traceparent),
            tracestate,
        })
    }

    /// The trace context of an HTTP request, when it sent a well-formed one.
    pub fn from_http_headers(headers: &axum::http::HeaderMap) -> Option<Self> {
        Self::extract(&HttpHeaders(headers))
    }

    /// The trace context of a Kafka record's headers (a consumed record's
    /// `BorrowedHeaders` or an `OwnedHeaders`).
    pub fn from_record_headers<H: Headers>(headers: &H) -> Option<Self> {
        Self::extract(&RecordHeaders(headers))
    }

    /// Reads the trace context of a record's headers given as name–value pairs
    /// (values that are not UTF-8 count as absent).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Option<Self> {
        let mut fields = TraceFields::default();
        for (name, value) in headers {
            let value = value.and_then(|v| std::str::from_utf8(v).ok());
            match name {
                TRACEPARENT => fields.traceparent = value,
                TRACESTATE => fields.tracestate = value,
                _ => {}
            }
        }
        Self::extract(&fields)
    }

    /// Adds `traceparent` (and `tracestate`) to a record's headers.
    pub fn add_to(&self, mut headers: OwnedHeaders) -> OwnedHeaders {
        self.inject(&mut RecordHeadersMut(&mut headers));
        headers
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut fields = OwnedTraceFields::default();
        self.inject(&mut fields);
        fields.traceparent.unwrap_or_default()
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        TraceId::from_bytes(self.trace_id).to_string()
    }

    fn from_otel(context: &SpanContext) -> Option<Self> {
        if !context.is_valid() {
            return None;
        }
        let state = context.trace_state().header();
        Some(Self {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
            state: Some(state).filter(|s| is_passable_state(s)),
        })
    }

    fn to_otel(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            self.state
                .as_deref()
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default(),
        )
    }
}

/// Whether the first four fields of `traceparent` have the W3C's fixed widths
/// of hex digits (2, 32, 16, 2). The propagator reads the ids as integers, so
/// on its own it would take a shorter id or a signed one (`+…`) and hand on an
/// id the sender never had.
fn has_fixed_widths(traceparent: &str) -> bool {
    let mut fields = traceparent.trim().split('-');
    [2, 32, 16, 2].into_iter().all(|width| {
        fields
            .next()
            .is_some_and(|f| f.len() == width && f.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Whether a `tracestate` may travel on: non-empty, bounded, printable ASCII
/// (it goes into Kafka headers and on to other services' HTTP requests).
fn is_passable_state(state: &str) -> bool {
    !state.is_empty()
        && state.len() <= MAX_TRACESTATE
        && state.bytes().all(|b| matches!(b, b' '..=b'~'))
}

/// The two trace context values, as a `Request` keeps them: a carrier for
/// the propagator.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceFields<'a> {
    /// `traceparent`.
    pub traceparent: Option<&'a str>,
    /// `tracestate`.
    pub tracestate: Option<&'a str>,
}

impl Extractor for TraceFields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [
            (TRACEPARENT, self.traceparent),
            (TRACESTATE, self.tracestate),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|_| key))
        .collect()
    }
}

/// What the propagator writes, kept as owned strings.
#[derive(Default)]
struct OwnedTraceFields {
    traceparent: Option<String>,
}

impl Injector for OwnedTraceFields {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.traceparent = Some(value);
        }
    }
}

/// Drops the empty `tracestate` that the propagator writes for a context
/// without one: the record contract leaves the header out instead.
struct SkipEmpty<'a>(&'a mut dyn Injector);

impl Injector for SkipEmpty<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.set(key, value);
        }
    }
}

/// An HTTP request's headers, as a carrier the propagator reads.
#[derive(Debug, Clone, Copy)]
pub struct HttpHeaders<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// A Kafka record's headers, as a carrier the propagator reads (the first
/// header of a name counts; values that are not UTF-8 count as absent).
pub struct RecordHeaders<'a, H>(pub &'a H);

impl<H: Headers> Extractor for RecordHeaders<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// Headers of a Kafka record being built, as a carrier the propagator writes.
pub struct RecordHeadersMut<'a>(pub &'a mut OwnedHeaders);

impl Injector for RecordHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let headers = std::mem::take(self.0);
        *self.0 = headers.insert(Header {
            key,
            value: Some(&value),
        });
    }
}

/// Makes `span` the next hop after `parent` (a new trace when `None`) and
/// returns the context to pass on: the same trace id and this hop's span id.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceContext>) -> TraceContext {
    if let Some(parent) = parent {
        let context = opentelemetry::Context::new().with_remote_span_context(parent.to_otel());
        // Fails only when no OpenTelemetry layer is installed (export off).
        let _ = span.set_parent(context);
    }
    let exported = span.context().span().span_context().clone();
    if exported.is_valid() {
        return TraceContext {
            trace_id: exported.trace_id().to_bytes(),
            span_id: exported.span_id().to_bytes(),
            flags: exported.trace_flags().to_u8(),
            state: parent.and_then(|p| p.state.clone()),
        };
    }
    // Export is off: keep the trace id, give this hop an id of its own.
    let ids = RandomIdGenerator::default();
    let trace_id = match parent {
        Some(parent) => parent.trace_id,
        None => valid(TraceId::INVALID, || ids.new_trace_id()).to_bytes(),
    };
    let span_id = valid(SpanId::INVALID, || ids.new_span_id()).to_bytes();
    TraceContext {
        trace_id,
        span_id,
        flags: parent.map_or(TraceFlags::SAMPLED.to_u8(), |p| p.flags),
        state: parent.and_then(|p| p.state.clone()),
    }
}

/// A fresh id other than `invalid` (all zero), which W3C forbids.
fn valid<T: PartialEq>(invalid: T, mut fresh: impl FnMut() -> T) -> T {
    loop {
        let id = fresh();
        if id != invalid {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_traceparent() {
        let t = TraceContext::parse(SAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(t.traceparent(), SAMPLE);
        assert_eq!(t.state.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(TraceContext::parse(&format!("01{}-more", &SAMPLE[2..]), None).is_some());
    }

    #[test]
    fn invalid_or_oversized_tracestate_is_dropped_not_the_trace() {
        let long = format!("a={}", "b".repeat(MAX_TRACESTATE));
        for bad in ["no-equals-sign", "UPPER=1", long.as_str(), "  "] {
            let t = TraceContext::parse(SAMPLE, Some(bad)).unwrap();
            assert_eq!(t.state, None, "{bad}");
        }
        let t = TraceContext::parse(SAMPLE, Some(" a=1 , ,b=2")).unwrap();
        assert_eq!(t.state.as_deref(), Some("a=1,b=2"));
    }

    #[test]
    fn http_and_record_carriers_agree() {
        let mut http = axum::http::HeaderMap::new();
        http.insert("traceparent", SAMPLE.parse().unwrap());
        http.insert("tracestate", "vendor=1".parse().unwrap());
        let from_http = TraceContext::from_http_headers(&http).unwrap();
        let record = from_http.add_to(OwnedHeaders::new().insert(Header {
            key: "correlation-id",
            value: Some("c-1"),
        }));
        assert_eq!(record.count(), 3);
        assert_eq!(
            TraceContext::from_record_headers(&record).as_ref(),
            Some(&from_http)
        );
        let pairs = record.iter().map(|h| (h.key, h.value));
        assert_eq!(TraceContext::from_headers(pairs).as_ref(), Some(&from_http));
        // No tracestate: no empty header either.
        let bare = TraceContext::parse(SAMPLE, None)
            .unwrap()
            .add_to(OwnedHeaders::new());
        assert_eq!(bare.count(), 1);
        assert_eq!(
            TraceContext::from_http_headers(&axum::http::HeaderMap::new()),
            None
        );
    }

    #[test]
    fn a_hop_keeps_the_trace_and_gets_its_own_span() {
        let parent = TraceContext::parse(SAMPLE, None).unwrap();
        let next = continue_trace(&tracing::Span::none(), Some(&parent));
        assert_eq!(next.trace_id, parent.trace_id);
        assert_ne!(next.span_id, parent.span_id);
        let root = continue_trace(&tracing::Span::none(), None);
        assert_ne!(root.trace_id, [0; 16]);
        assert_eq!(
            TraceContext::parse(&root.traceparent(), None).as_ref(),
            Some(&root)
        );
    }
}
