//! Spring for Apache Kafka's reply addressing, as a command from a
//! `ReplyingKafkaTemplate` carries it: the reply goes to `kafka_replyTopic`
//! (and `kafka_replyPartition`, when set) and carries `kafka_correlationId`
//! back byte for byte: 16 raw bytes by default, a string with
//! `setBinaryCorrelation(false)` (see docs/records.md).

use rdkafka::message::{Header, OwnedHeaders};

use super::{RequestError, header, is_valid_correlation_id};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The text form of a `kafka_correlationId`, for the [`Request`](super::Request)'s
/// `correlation_id` (logs, the reply's key and `correlation-id`): the id
/// itself when it is a valid correlation id (a string id, or the gateway's),
/// else the way Spring prints a `CorrelationKey`: lower-case hex, dashed like
/// a UUID when it is 16 bytes.
pub(super) fn correlation_text(raw: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(raw)
        && is_valid_correlation_id(text)
    {
        return text.to_owned();
    }
    let mut text = String::with_capacity(raw.len() * 2 + 4);
    for (i, byte) in raw.iter().enumerate() {
        if raw.len() == 16 && matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        for nibble in [byte >> 4, byte & 0x0f] {
            text.push(char::from(HEX[usize::from(nibble)]));
        }
    }
    text
}

/// `kafka_replyPartition`: a 4-byte big-endian partition number, as Spring
/// writes it.
///
/// # Errors
/// [`RequestError::Malformed`] when it is not 4 bytes or is negative.
pub(super) fn reply_partition(raw: &[u8]) -> Result<i32, RequestError> {
    <[u8; 4]>::try_from(raw)
        .ok()
        .map(i32::from_be_bytes)
        .filter(|partition| *partition >= 0)
        .ok_or_else(|| RequestError::Malformed(header::SPRING_REPLY_PARTITION.to_owned()))
}

/// `headers` of a reply with `kafka_correlationId` added: `correlation_id`
/// exactly as the command carried it, which is what a `ReplyingKafkaTemplate`
/// matches its reply by.
pub fn with_correlation_id(headers: OwnedHeaders, correlation_id: &[u8]) -> OwnedHeaders {
    headers.insert(Header {
        key: header::SPRING_CORRELATION_ID,
        value: Some(correlation_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_id_reads_as_spring_prints_it_and_a_string_id_as_itself() {
        let uuid: Vec<u8> = (0x10..0x20).collect();
        assert_eq!(
            correlation_text(&uuid),
            "10111213-1415-1617-1819-1a1b1c1d1e1f"
        );
        assert_eq!(correlation_text(&[0xff, 0x00, 0x7f]), "ff007f");
        let string = "6a3c1f0e-2b9d-4c47-8a51-0f3e7d2c9b10";
        assert_eq!(correlation_text(string.as_bytes()), string);
        // Text that is no valid correlation id is shown as bytes.
        assert_eq!(correlation_text(b"a b"), "612062");
    }

    #[test]
    fn a_reply_partition_is_four_big_endian_bytes() {
        assert_eq!(reply_partition(&[0, 0, 0, 2]), Ok(2));
        assert_eq!(reply_partition(&[0, 0, 1, 0]), Ok(256));
        let malformed = Err(RequestError::Malformed("kafka_replyPartition".into()));
        assert_eq!(reply_partition(&[2]), malformed);
        assert_eq!(reply_partition(&[0xff, 0xff, 0xff, 0xff]), malformed);
        assert_eq!(reply_partition(b"2"), malformed);
    }
}
