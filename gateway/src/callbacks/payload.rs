//! The body a callback POSTs: one JSON object in the Standard Webhooks
//! shape (`type`, `timestamp`, `data`), `data` being the reply:
//!
//! ```json
//! {"type":"reply","timestamp":1764748800,
//!  "data":{"correlation_id":"…","status":200,"content_type":"application/json",
//!          "headers":[["etag","\"7\""]],"body_encoding":"json","body":{"hello":"world"}}}
//! ```
//!
//! `body_encoding` says how `body` carries the reply's bytes: `json` (the
//! reply is declared JSON and parses: the value itself), `text` (UTF-8: a
//! string) or `base64` (anything else: standard base64 with padding).
//! The signature is over these exact bytes.

use serde::Serialize;

use replyway_shared::record::Reply;

use crate::reply::BodyJson;
use crate::routes::Route;

#[derive(Serialize)]
struct Envelope<'a> {
    r#type: &'static str,
    timestamp: u64,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    correlation_id: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body_encoding: &'static str,
    body: serde_json::Value,
}

/// The POSTed body for request `id`'s `reply` at `timestamp` (unix seconds);
/// the reply's headers are those the route lets through (its
/// `reply_headers`, when set).
pub fn body(id: &str, reply: &Reply, route: Option<&Route>, timestamp: u64) -> Vec<u8> {
    let content_type = reply.content_type.as_deref();
    let (body_encoding, body) = match BodyJson::of(content_type, &reply.body) {
        BodyJson::Json(value) => ("json", value),
        BodyJson::Text(text) => ("text", serde_json::Value::String(text)),
        BodyJson::Base64(encoded) => ("base64", serde_json::Value::String(encoded)),
    };
    let allowed = route.and_then(|r| r.reply_headers.as_ref());
    let headers = reply
        .headers
        .iter()
        .filter(|(name, _)| {
            allowed.is_none_or(|list| list.iter().any(|h| h.as_str().eq_ignore_ascii_case(name)))
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let envelope = Envelope {
        r#type: "reply",
        timestamp,
        data: Data {
            correlation_id: id,
            status: reply.status,
            content_type,
            headers,
            body_encoding,
            body,
        },
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(reply: &Reply) -> serde_json::Value {
        serde_json::from_slice(&body("id-1", reply, None, 1_700_000_000)).unwrap()
    }

    #[test]
    fn a_json_reply_is_embedded_as_json() {
        let mut reply = Reply::with_body(201, "application/json", br#"{"a":1}"#.to_vec());
        reply.headers.push(("etag".into(), "\"7\"".into()));
        let v = decoded(&reply);
        assert_eq!(v["type"], "reply");
        assert_eq!(v["timestamp"], 1_700_000_000);
        assert_eq!(v["data"]["correlation_id"], "id-1");
        assert_eq!(v["data"]["status"], 201);
        assert_eq!(v["data"]["content_type"], "application/json");
        assert_eq!(v["data"]["headers"][0][0], "etag");
        assert_eq!(v["data"]["body_encoding"], "json");
        assert_eq!(v["data"]["body"]["a"], 1);
    }

    #[test]
    fn text_and_bytes_are_strings() {
        let text = Reply::with_body(200, "text/plain", b"{\"not\": \"declared json\"}".to_vec());
        assert_eq!(decoded(&text)["data"]["body_encoding"], "text");
        assert_eq!(
            decoded(&text)["data"]["body"],
            "{\"not\": \"declared json\"}"
        );
        let bytes = Reply::with_body(200, "application/octet-stream", vec![0, 255, 10]);
        assert_eq!(decoded(&bytes)["data"]["body_encoding"], "base64");
        assert_eq!(decoded(&bytes)["data"]["body"], "AP8K");
        let broken = Reply::with_body(200, "application/json", b"{".to_vec());
        assert_eq!(decoded(&broken)["data"]["body_encoding"], "text");
    }
}
