//! The chunk protocol's frames: encoding and checking, no I/O.
//!
//! Request: `op: u8 | hash: [u8; 32] | len: u32 BE` then `len` payload bytes.
//! Response: `status: u8 | len: u32 BE` then `len` payload bytes.
//! Every length is checked against its bound before a byte of payload is read or allocated.

use crate::{Hash, CHUNK_SIZE_BYTES};

use super::{ERROR_MESSAGE_BYTES_MAX, HAVE_BATCH_MAX};

pub(crate) const REQUEST_HEADER_BYTES: usize = 1 + 32 + 4;
pub(crate) const RESPONSE_HEADER_BYTES: usize = 1 + 4;
const HASH_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Send me the chunk `hash`. No payload.
    Get = 1,
    /// Store this chunk (payload) under `hash`. Ok once durable.
    Put = 2,
    /// Which of these hashes (payload: `n * 32` bytes, `hash` unused and zero) do you hold?
    Have = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    /// The server's copy fails verification (GET), or the pushed bytes do not match (PUT).
    Corrupt = 2,
    /// Anything else: payload is a UTF-8 message.
    Error = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestHeader {
    pub op: Op,
    pub hash: Hash,
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResponseHeader {
    pub status: Status,
    pub len: u32,
}

/// A frame that breaks the protocol; the message says which field and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WireError(pub String);

/// Largest request payload for `op`.
pub(crate) fn request_len_max(op: Op) -> usize {
    match op {
        Op::Get => 0,
        Op::Put => CHUNK_SIZE_BYTES,
        Op::Have => HAVE_BATCH_MAX * HASH_BYTES,
    }
}

/// Largest response payload for `status` to a request `op`.
pub(crate) fn response_len_max(op: Op, status: Status) -> usize {
    match (status, op) {
        (Status::Ok, Op::Get) => CHUNK_SIZE_BYTES,
        (Status::Ok, Op::Put) => 0,
        (Status::Ok, Op::Have) => HAVE_BATCH_MAX,
        (Status::NotFound | Status::Corrupt, _) => 0,
        (Status::Error, _) => ERROR_MESSAGE_BYTES_MAX,
    }
}

impl RequestHeader {
    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        debug_assert!(self.len as usize <= request_len_max(self.op));
        let mut out = [0u8; REQUEST_HEADER_BYTES];
        out[0] = self.op as u8;
        out[1..33].copy_from_slice(&self.hash.0);
        out[33..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; REQUEST_HEADER_BYTES]) -> Result<RequestHeader, WireError> {
        let op = match bytes[0] {
            1 => Op::Get,
            2 => Op::Put,
            3 => Op::Have,
            other => return Err(WireError(format!("unknown request op {other}"))),
        };
        let mut hash = [0u8; HASH_BYTES];
        hash.copy_from_slice(&bytes[1..33]);
        let len = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
        let max = request_len_max(op);
        if len as usize > max {
            return Err(WireError(format!(
                "{op:?} request payload length {len} exceeds the limit of {max} bytes"
            )));
        }
        if op == Op::Have && !(len as usize).is_multiple_of(HASH_BYTES) {
            return Err(WireError(format!(
                "HAVE request payload length {len} is not a multiple of {HASH_BYTES} (one hash each)"
            )));
        }
        Ok(RequestHeader {
            op,
            hash: Hash(hash),
            len,
        })
    }
}

impl ResponseHeader {
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_BYTES] {
        let mut out = [0u8; RESPONSE_HEADER_BYTES];
        out[0] = self.status as u8;
        out[1..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes the answer to a request `op`, checking the length against its bound.
    pub fn decode(
        bytes: &[u8; RESPONSE_HEADER_BYTES],
        op: Op,
    ) -> Result<ResponseHeader, WireError> {
        let status = match bytes[0] {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Corrupt,
            3 => Status::Error,
            other => return Err(WireError(format!("unknown response status {other}"))),
        };
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let max = response_len_max(op, status);
        if len as usize > max {
            return Err(WireError(format!(
                "{status:?} response to {op:?} has payload length {len}, over the limit of {max} bytes"
            )));
        }
        Ok(ResponseHeader { status, len })
    }
}

/// HAVE request payload: the hashes back to back. At most [`HAVE_BATCH_MAX`].
pub(crate) fn encode_have_request(hashes: &[Hash]) -> Vec<u8> {
    assert!(hashes.len() <= HAVE_BATCH_MAX, "HAVE batch over its bound");
    hashes.iter().flat_map(|h| h.0).collect()
}

pub(crate) fn decode_have_request(payload: &[u8]) -> Result<Vec<Hash>, WireError> {
    if !payload.len().is_multiple_of(HASH_BYTES) || payload.len() > HAVE_BATCH_MAX * HASH_BYTES {
        return Err(WireError(format!(
            "HAVE request payload of {} bytes is not up to {HAVE_BATCH_MAX} hashes of {HASH_BYTES} bytes",
            payload.len()
        )));
    }
    Ok(payload
        .chunks_exact(HASH_BYTES)
        .map(|c| {
            let mut h = [0u8; HASH_BYTES];
            h.copy_from_slice(c);
            Hash(h)
        })
        .collect())
}

/// HAVE answer payload: one byte per asked hash, 1 = held, 0 = not.
pub(crate) fn encode_have_response(held: &[bool]) -> Vec<u8> {
    held.iter().map(|&b| u8::from(b)).collect()
}

pub(crate) fn decode_have_response(payload: &[u8], asked: usize) -> Result<Vec<bool>, WireError> {
    if payload.len() != asked {
        return Err(WireError(format!(
            "HAVE answer has {} entries for {asked} hashes asked",
            payload.len()
        )));
    }
    payload
        .iter()
        .map(|&b| match b {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError(format!(
                "HAVE answer entry {other} is neither 0 nor 1"
            ))),
        })
        .collect()
}

/// An Error response payload: `message` cut to [`ERROR_MESSAGE_BYTES_MAX`] at a char boundary.
pub(crate) fn error_message_payload(message: &str) -> &[u8] {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips_and_bounds_lengths() {
        let hash = Hash::of(b"chunk");
        for (op, len) in [
            (Op::Get, 0),
            (Op::Put, CHUNK_SIZE_BYTES as u32),
            (Op::Have, (HAVE_BATCH_MAX * 32) as u32),
        ] {
            let header = RequestHeader { op, hash, len };
            assert_eq!(RequestHeader::decode(&header.encode()), Ok(header));
        }
        let mut too_long = RequestHeader {
            op: Op::Put,
            hash,
            len: 0,
        }
        .encode();
        too_long[33..].copy_from_slice(&(CHUNK_SIZE_BYTES as u32 + 1).to_be_bytes());
        let err = RequestHeader::decode(&too_long).expect_err("over the chunk bound");
        assert!(err.0.contains("exceeds the limit of 4194304"), "{err}");

        let mut get_with_payload = RequestHeader {
            op: Op::Get,
            hash,
            len: 0,
        }
        .encode();
        get_with_payload[36] = 1;
        assert!(RequestHeader::decode(&get_with_payload).is_err());

        let mut have = RequestHeader {
            op: Op::Have,
            hash,
            len: 0,
        }
        .encode();
        have[33..].copy_from_slice(&33u32.to_be_bytes());
        let err = RequestHeader::decode(&have).expect_err("not whole hashes");
        assert!(err.0.contains("multiple of 32"), "{err}");
        have[33..].copy_from_slice(&((HAVE_BATCH_MAX as u32 + 1) * 32).to_be_bytes());
        assert!(RequestHeader::decode(&have).is_err());

        let mut unknown = have;
        unknown[0] = 9;
        assert_eq!(
            RequestHeader::decode(&unknown),
            Err(WireError("unknown request op 9".into()))
        );
    }

    #[test]
    fn response_header_bounds_depend_on_the_request() {
        let ok_get = ResponseHeader {
            status: Status::Ok,
            len: CHUNK_SIZE_BYTES as u32,
        };
        assert_eq!(
            ResponseHeader::decode(&ok_get.encode(), Op::Get),
            Ok(ok_get)
        );
        // The same length is a protocol error as the answer to a PUT or a HAVE.
        assert!(ResponseHeader::decode(&ok_get.encode(), Op::Put).is_err());
        assert!(ResponseHeader::decode(&ok_get.encode(), Op::Have).is_err());
        let over = ResponseHeader {
            status: Status::Ok,
            len: CHUNK_SIZE_BYTES as u32 + 1,
        };
        assert!(ResponseHeader::decode(&over.encode(), Op::Get).is_err());
        // Corrupt and NotFound carry nothing: no bytes of a corrupt chunk travel.
        for status in [Status::Corrupt, Status::NotFound] {
            let empty = ResponseHeader { status, len: 0 };
            assert_eq!(ResponseHeader::decode(&empty.encode(), Op::Get), Ok(empty));
            let with_bytes = ResponseHeader { status, len: 1 };
            assert!(ResponseHeader::decode(&with_bytes.encode(), Op::Get).is_err());
        }
        let error = ResponseHeader {
            status: Status::Error,
            len: ERROR_MESSAGE_BYTES_MAX as u32 + 1,
        };
        assert!(ResponseHeader::decode(&error.encode(), Op::Get).is_err());
        let mut unknown = error.encode();
        unknown[0] = 4;
        assert!(ResponseHeader::decode(&unknown, Op::Get).is_err());
    }

    #[test]
    fn have_payloads_round_trip_and_reject_malformed_input() {
        let hashes: Vec<Hash> = (0..5u8).map(|i| Hash::of(&[i])).collect();
        let payload = encode_have_request(&hashes);
        assert_eq!(payload.len(), 5 * 32);
        assert_eq!(decode_have_request(&payload), Ok(hashes));
        assert!(decode_have_request(&payload[..31]).is_err());
        assert!(decode_have_request(&vec![0u8; (HAVE_BATCH_MAX + 1) * 32]).is_err());

        let held = vec![true, false, true];
        let answer = encode_have_response(&held);
        assert_eq!(answer, vec![1, 0, 1]);
        assert_eq!(decode_have_response(&answer, 3), Ok(held));
        assert!(decode_have_response(&answer, 4).is_err());
        assert!(decode_have_response(&[1, 2], 2).is_err());
    }

    #[test]
    fn error_messages_are_cut_at_the_bound_on_a_char_boundary() {
        assert_eq!(error_message_payload("disk full"), b"disk full");
        let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
        let cut = error_message_payload(&long);
        assert!(cut.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(std::str::from_utf8(cut).is_ok());
    }

    mod properties {
        //! Property tests: every decoder over arbitrary bytes never panics, accepts only what
        //! is in bounds, and is the inverse of its encoder.

        use super::*;
        use proptest::prelude::*;

        const OPS: [Op; 3] = [Op::Get, Op::Put, Op::Have];
        const STATUSES: [Status; 4] =
            [Status::Ok, Status::NotFound, Status::Corrupt, Status::Error];

        fn op() -> impl Strategy<Value = Op> {
            prop::sample::select(&OPS[..])
        }

        fn status() -> impl Strategy<Value = Status> {
            prop::sample::select(&STATUSES[..])
        }

        /// A length field: anything, or near one of the bounds.
        fn len_field() -> impl Strategy<Value = u32> {
            let near = |bound: usize| (bound as u32).saturating_sub(2)..=(bound as u32 + 2);
            prop_oneof![
                any::<u32>(),
                0u32..70,
                near(CHUNK_SIZE_BYTES),
                near(HAVE_BATCH_MAX * HASH_BYTES),
                near(HAVE_BATCH_MAX),
                near(ERROR_MESSAGE_BYTES_MAX),
            ]
        }

        /// A header's bytes: the kind byte anything or near the defined ones, then a length
        /// that is often near a bound.
        fn header_bytes<const N: usize>() -> impl Strategy<Value = [u8; N]> {
            (
                prop_oneof![0u8..6, any::<u8>()],
                prop::collection::vec(any::<u8>(), N - 5),
                len_field(),
            )
                .prop_map(|(kind, middle, len)| {
                    let mut bytes = [0u8; N];
                    bytes[0] = kind;
                    bytes[1..N - 4].copy_from_slice(&middle);
                    bytes[N - 4..].copy_from_slice(&len.to_be_bytes());
                    bytes
                })
        }

        fn hash() -> impl Strategy<Value = Hash> {
            prop::collection::vec(any::<u8>(), HASH_BYTES)
                .prop_map(|bytes| Hash(bytes.try_into().expect("32 bytes")))
        }

        proptest! {
            #![proptest_config(crate::proptest_config(2_000))]

            #[test]
            fn request_header_decode_accepts_only_valid_headers(
                bytes in header_bytes::<REQUEST_HEADER_BYTES>(),
            ) {
                let expected_op = OPS.iter().copied().find(|op| *op as u8 == bytes[0]);
                let len = u32::from_be_bytes(bytes[33..].try_into().expect("4 bytes"));
                let valid = expected_op.is_some_and(|op| {
                    len as usize <= request_len_max(op)
                        && (op != Op::Have || (len as usize).is_multiple_of(HASH_BYTES))
                });
                match RequestHeader::decode(&bytes) {
                    Ok(header) => {
                        prop_assert!(valid, "accepted {:?}", header);
                        prop_assert_eq!(Some(header.op), expected_op);
                        prop_assert_eq!(header.encode(), bytes);
                    }
                    Err(error) => prop_assert!(!valid, "refused a valid header: {}", error),
                }
            }

            #[test]
            fn request_header_round_trips(op in op(), hash in hash(), len in any::<u32>()) {
                let max = request_len_max(op);
                let mut len = len as usize % (max + 1);
                if op == Op::Have {
                    len -= len % HASH_BYTES;
                }
                let header = RequestHeader { op, hash, len: len as u32 };
                prop_assert_eq!(RequestHeader::decode(&header.encode()), Ok(header));
            }

            #[test]
            fn response_header_decode_accepts_only_lengths_in_bounds_for_the_request(
                bytes in header_bytes::<RESPONSE_HEADER_BYTES>(),
                op in op(),
            ) {
                let expected = STATUSES.iter().copied().find(|s| *s as u8 == bytes[0]);
                let len = u32::from_be_bytes(bytes[1..].try_into().expect("4 bytes"));
                let valid = expected.is_some_and(|s| len as usize <= response_len_max(op, s));
                match ResponseHeader::decode(&bytes, op) {
                    Ok(header) => {
                        prop_assert!(valid, "accepted {:?} for {:?}", header, op);
                        prop_assert_eq!(Some(header.status), expected);
                        prop_assert_eq!(header.encode(), bytes);
                    }
                    Err(error) => prop_assert!(!valid, "refused a valid header: {}", error),
                }
            }

            #[test]
            fn response_header_round_trips(op in op(), status in status(), len in any::<u32>()) {
                let len = (len as usize % (response_len_max(op, status) + 1)) as u32;
                let header = ResponseHeader { status, len };
                prop_assert_eq!(ResponseHeader::decode(&header.encode(), op), Ok(header));
            }

            #[test]
            fn error_message_payload_is_a_bounded_utf8_prefix(message in any::<String>()) {
                let payload = error_message_payload(&message);
                prop_assert!(payload.len() <= ERROR_MESSAGE_BYTES_MAX);
                prop_assert!(message.as_bytes().starts_with(payload));
                prop_assert!(std::str::from_utf8(payload).is_ok());
            }
        }

        proptest! {
            #![proptest_config(crate::proptest_config(300))]

            #[test]
            fn have_request_decode_accepts_only_whole_batches_in_bounds(
                len in prop_oneof![
                    0usize..200,
                    (HAVE_BATCH_MAX * HASH_BYTES - 40)..(HAVE_BATCH_MAX * HASH_BYTES + 40),
                ],
                seed in any::<u8>(),
            ) {
                let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
                let valid = len.is_multiple_of(HASH_BYTES) && len <= HAVE_BATCH_MAX * HASH_BYTES;
                match decode_have_request(&payload) {
                    Ok(hashes) => {
                        prop_assert!(valid, "accepted {} bytes", len);
                        prop_assert_eq!(hashes.len(), len / HASH_BYTES);
                        prop_assert_eq!(encode_have_request(&hashes), payload);
                    }
                    Err(_) => prop_assert!(!valid, "refused {} bytes", len),
                }
            }

            #[test]
            fn have_response_decode_accepts_only_one_bit_per_hash_asked(
                payload in prop::collection::vec(prop_oneof![8 => 0u8..=1, 1 => 2u8..=3, 1 => any::<u8>()], 0..40),
                // Mostly as many as the payload holds, so the entries themselves are checked.
                offset in prop_oneof![3 => Just(0isize), 1 => -2isize..=2],
            ) {
                let asked = payload.len().saturating_add_signed(offset);
                let valid = payload.len() == asked && payload.iter().all(|&b| b <= 1);
                match decode_have_response(&payload, asked) {
                    Ok(held) => {
                        prop_assert!(valid, "accepted {:?} for {}", payload, asked);
                        prop_assert_eq!(encode_have_response(&held), payload);
                    }
                    Err(_) => prop_assert!(!valid, "refused {:?} for {}", payload, asked),
                }
            }

            #[test]
            fn have_payloads_round_trip(
                hashes in prop::collection::vec(
                    any::<u64>().prop_map(|seed| Hash::of(&seed.to_le_bytes())),
                    0..=HAVE_BATCH_MAX,
                ),
                held_seed in any::<u64>(),
            ) {
                prop_assert_eq!(decode_have_request(&encode_have_request(&hashes)), Ok(hashes.clone()));
                let held: Vec<bool> = (0..hashes.len()).map(|i| (held_seed >> (i % 64)) & 1 == 1).collect();
                prop_assert_eq!(decode_have_response(&encode_have_response(&held), held.len()), Ok(held));
            }
        }
    }
}
