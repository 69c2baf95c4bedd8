//! W3C trace context across the hops of a request: HTTP client → gateway →
//! request record → service (`Responder`) → reply record → collector.
//!
//! Every hop opens a `tracing` span whose parent is the context it received
//! and passes its own context on (`traceparent`, `tracestate`). When
//! OpenTelemetry export is configured ([`crate::telemetry`]) the span ids are
//! those of the exported spans; when it is not, fresh random ids are used, so
//! the trace id still travels end to end.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rdkafka::message::{Header, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A W3C trace context: what `traceparent` and `tracestate` carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes of the sending span, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// `tracestate`, passed on unchanged.
    pub state: Option<String>,
}

/// Longest `tracestate` passed on (the W3C limit is 32 members of ≤ 256 chars).
pub const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    /// Parses `traceparent` (version 00, or a later version's first four
    /// fields) and an optional `tracestate`. `None` when malformed: the hop then
    /// starts a new trace, as the W3C recommendation says.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = crate::hex::decode::<1>(parts.next()?)?;
        if version[0] == 0xff {
            return None;
        }
        let trace_id = crate::hex::decode::<16>(parts.next()?)?;
        let span_id = crate::hex::decode::<8>(parts.next()?)?;
        let flags = crate::hex::decode::<1>(parts.next()?)?[0];
        if version[0] == 0 && parts.next().is_some() {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
            .map(str::to_owned);
        Some(Self {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            crate::hex::encode(&self.trace_id),
            crate::hex::encode(&self.span_id),
            self.flags
        )
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        crate::hex::encode(&self.trace_id)
    }

    /// Adds `traceparent` (and `tracestate`) to a record's headers.
    pub fn add_to(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = headers.insert(Header {
            key: crate::record::header::TRACEPARENT,
            value: Some(&self.traceparent()),
        });
        match &self.state {
            Some(state) => headers.insert(Header {
                key: crate::record::header::TRACESTATE,
                value: Some(state),
            }),
            None => headers,
        }
    }

    /// Reads the trace context of a record's headers.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Option<Self> {
        let (mut parent, mut state) = (None, None);
        for (name, value) in headers {
            match name {
                crate::record::header::TRACEPARENT => parent = value,
                crate::record::header::TRACESTATE => state = value,
                _ => {}
            }
        }
        let text = |v: &'a [u8]| std::str::from_utf8(v).ok();
        Self::parse(text(parent?)?, state.and_then(text))
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

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        for chunk in out.chunks_mut(16) {
            let random = uuid::Uuid::new_v4().into_bytes();
            chunk.copy_from_slice(&random[..chunk.len()]);
        }
        if out != [0; N] {
            return out;
        }
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
    TraceContext {
        trace_id: parent.map_or_else(random_bytes, |p| p.trace_id),
        span_id: random_bytes(),
        flags: parent.map_or(1, |p| p.flags),
        state: parent.and_then(|p| p.state.clone()),
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
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(TraceContext::parse(&format!("01{}-more", &SAMPLE[2..]), None).is_some());
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
