//! Replies stored in Redis and notifications published on a node's channel
//! (`decode_reply`, `decode_notification`): Redis is shared infrastructure, so
//! what it holds is not trusted. On success, encoding the decoded reply and
//! decoding it again gives the same reply. And any reply, including binary
//! bodies and odd headers, survives `encode_reply` → `decode_reply`.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use replyway_shared::record::Reply;
use replyway_shared::store::{decode_notification, decode_reply, encode_reply};

/// Any reply, as the collector may be handed one to store.
#[derive(Arbitrary, Debug)]
struct AnyReply {
    status: u16,
    content_type: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A part of a streamed reply, and whether it is the last.
    part: Option<u32>,
    last: bool,
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a stored reply.
    if let Ok(reply) = decode_reply(data) {
        let encoded = encode_reply(&reply);
        let again = decode_reply(&encoded).expect("an encoded reply does not decode");
        assert_eq!(again, reply);
        // Re-encoding is stable.
        assert_eq!(encode_reply(&again), encoded);
    }

    // The bytes as a notification: `<id>\n<stored reply>`.
    if let Ok((id, reply)) = decode_notification(data) {
        assert!(!id.contains('\n'));
        let mut payload = id.clone().into_bytes();
        payload.push(b'\n');
        payload.extend_from_slice(&encode_reply(&reply));
        let (id2, reply2) =
            decode_notification(&payload).expect("an encoded notification does not decode");
        assert_eq!((id2, reply2), (id, reply));
    }

    // The same bytes as the source of an arbitrary reply: encode, decode.
    let mut u = Unstructured::new(data);
    if let Ok(any) = AnyReply::arbitrary(&mut u) {
        let reply = Reply {
            status: any.status,
            content_type: any.content_type,
            headers: any.headers,
            body: Bytes::from(any.body),
            part: any.part,
            last: any.last,
        };
        let decoded =
            decode_reply(&encode_reply(&reply)).expect("encode_reply output does not decode");
        assert_eq!(decoded, reply);
    }
});
