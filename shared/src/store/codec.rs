//! The stored reply format: one line of JSON (status, content type, headers,
//! and a streamed reply's part), a newline, then the body's raw bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::record::Reply;

#[derive(Serialize, Deserialize)]
struct Head<'a> {
    status: u16,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    content_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    part: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    last: bool,
}

/// Encodes a reply for Redis: one line of JSON (status, content type, headers),
/// a newline, then the body's raw bytes. Readable with `redis-cli`, decodable in
/// any language.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let head = Head {
        status: reply.status,
        content_type: reply.content_type.as_deref().map(Into::into),
        headers: reply.headers.clone(),
        part: reply.part,
        last: reply.last,
    };
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&reply.body);
    out
}

/// A stored reply or notification that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed stored reply: {0}")]
pub struct DecodeError(&'static str);

/// Decodes what [`encode_reply`] wrote.
///
/// # Errors
/// [`DecodeError`] when the bytes are not a stored reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(DecodeError("no head line"))?;
    let head: Head<'_> =
        serde_json::from_slice(&bytes[..newline]).map_err(|_| DecodeError("head is not JSON"))?;
    Ok(Reply {
        status: head.status,
        content_type: head.content_type.map(std::borrow::Cow::into_owned),
        headers: head.headers,
        body: Bytes::copy_from_slice(&bytes[newline + 1..]),
        part: head.part,
        last: head.last,
    })
}

/// A notification on a node's channel: `<id>\n<stored reply>` (what
/// `STORE_REPLY_LUA` publishes itself on one Redis). Shared, as
/// [`bytes::Bytes`], by the notifications of one reply to several nodes.
pub fn encode_notification(id: &str, encoded_reply: &[u8]) -> bytes::Bytes {
    let mut message = Vec::with_capacity(id.len() + 1 + encoded_reply.len());
    message.extend_from_slice(id.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(encoded_reply);
    message.into()
}

/// Splits a notification (`<id>\n<stored reply>`) into the id and the reply.
///
/// # Errors
/// [`DecodeError`] when the payload is not a notification.
pub fn decode_notification(payload: &[u8]) -> Result<(String, Reply), DecodeError> {
    let newline = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(DecodeError("no id line"))?;
    let id =
        std::str::from_utf8(&payload[..newline]).map_err(|_| DecodeError("id is not UTF-8"))?;
    Ok((id.to_owned(), decode_reply(&payload[newline + 1..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_reply_round_trips_with_binary_body() {
        let mut reply = Reply::with_body(409, "application/json", vec![0u8, b'\n', 255, b'{']);
        reply.headers.push(("etag".into(), "\"7\"".into()));
        let encoded = encode_reply(&reply);
        assert_eq!(decode_reply(&encoded).unwrap(), reply);
        let mut notification = b"id-1\n".to_vec();
        notification.extend_from_slice(&encoded);
        assert_eq!(encode_notification("id-1", &encoded), notification);
        let (id, decoded) = decode_notification(&notification).unwrap();
        assert_eq!(id, "id-1");
        assert_eq!(decoded, reply);
    }

    #[test]
    fn garbage_is_not_a_stored_reply() {
        assert!(decode_reply(b"no newline").is_err());
        assert!(decode_reply(b"not json\nbody").is_err());
        assert!(decode_notification(b"only-an-id").is_err());
    }
}
