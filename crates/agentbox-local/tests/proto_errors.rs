//! The protocol never hides a failure behind a made-up value: a report that does not parse is an
//! error, and a message that can't be encoded travels as a failure that says so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use agentbox_local::proto::{self, Kind};

#[test]
fn an_exit_report_that_does_not_parse_is_an_error_not_exit_255() {
    assert!(proto::decode_exited(b"not json").is_err());
    assert!(proto::decode_exited(b"{}").is_err());
    let ok = proto::decode_exited(br#"{"code":3,"signal":null,"timed_out":false,"micros":7}"#).unwrap();
    assert_eq!((ok.code, ok.micros), (3, 7));
}

#[test]
fn a_message_that_cannot_be_encoded_becomes_a_failure_frame_not_an_empty_payload() {
    // JSON objects need string keys: this map can't be encoded.
    let value: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    assert!(proto::try_encode_json(Kind::Started, 9, &value).is_err());
    let frame = proto::encode_json(Kind::Started, 9, &value);
    let header: &[u8; proto::HEADER] = frame[..proto::HEADER].try_into().unwrap();
    let (kind, id, len) = proto::parse_header(header);
    assert_eq!((kind, id, len), (Kind::Failure as u8, 9, frame.len() - proto::HEADER));
    let failure = proto::decode_failure(&frame[proto::HEADER..]);
    assert!(failure.message.starts_with("encoding a Started message failed"), "{failure:?}");
}
