//! The Connect protocol with the JSON codec, as envd speaks it.
//!
//! Unary calls are plain `POST /{package}.{Service}/{Method}` with `application/json` bodies; an error is a
//! non-200 status with `{"code": "not_found", "message": "..."}`. Server-streaming calls use
//! `application/connect+json`: the request and every response message are enveloped as
//! `[flags u8][length u32 big-endian][JSON]`, and the stream ends with an envelope whose flags have bit `0x02`
//! set and whose JSON is `{"error"?: {"code", "message"}, "metadata"?: {...}}`. The HTTP status of a stream is 200
//! even when it ends in an error.

use serde::{Deserialize, Serialize};

/// Envelope flag: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: this is the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Largest message accepted from a stream (envd sends output in chunks far below this).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A violation of the Connect wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A message uses compression, which was never negotiated.
    #[error("the server sent a compressed Connect message although no compression was negotiated")]
    Compressed,
    /// A message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("the server sent a {0}-byte Connect message, more than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    /// The stream ended inside a message.
    #[error("the stream ended in the middle of a Connect message ({0} bytes left over)")]
    Truncated(usize),
    /// The stream ended without its end-of-stream message.
    #[error("the stream ended without its end-of-stream message: the connection broke or the sandbox went away")]
    MissingEnd,
    /// Data followed the end-of-stream message.
    #[error("the server sent data after the end-of-stream message")]
    DataAfterEnd,
    /// A message is not the JSON it should be.
    #[error("the server sent a malformed {what}: {detail}")]
    BadMessage {
        /// What was expected.
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The response is not a Connect stream.
    #[error("expected a Connect stream (application/connect+json), got content type {0:?}")]
    NotAStream(String),
}

/// Wraps one JSON message in an envelope.
#[must_use]
pub fn envelope(flags: u8, json: &[u8]) -> Vec<u8> {
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// One envelope read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its flags.
    pub flags: u8,
    /// Its JSON payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Whether this is the end-of-stream message.
    #[must_use]
    pub fn is_end(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Splits a byte stream into envelopes, whatever the chunking of the transport.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    ended: bool,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete envelope, if one is buffered.
    ///
    /// # Errors
    /// [`ProtocolError`] for compressed, oversized or post-end messages.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.ended {
            return Err(ProtocolError::DataAfterEnd);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if flags & FLAG_COMPRESSED != 0 {
            return Err(ProtocolError::Compressed);
        }
        if len > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::TooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        let frame = Frame { flags, payload };
        if frame.is_end() {
            self.ended = true;
        }
        Ok(Some(frame))
    }

    /// Checks the state when the transport ends.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`] for leftover bytes, [`ProtocolError::MissingEnd`] without an end-of-stream message.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if !self.buf.is_empty() {
            return Err(if self.ended {
                ProtocolError::DataAfterEnd
            } else {
                ProtocolError::Truncated(self.buf.len())
            });
        }
        if !self.ended {
            return Err(ProtocolError::MissingEnd);
        }
        Ok(())
    }
}

/// A Connect error: a code such as `not_found` and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectError {
    /// The Connect code (`not_found`, `invalid_argument`, `unauthenticated`, ...).
    pub code: String,
    /// What went wrong, as the server put it.
    #[serde(default)]
    pub message: String,
}

/// The end-of-stream message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndStream {
    /// The error the stream ended with, if any.
    #[serde(default)]
    pub error: Option<ConnectError>,
}

impl EndStream {
    /// Parses an end-of-stream payload (an empty payload means no error).
    ///
    /// # Errors
    /// [`ProtocolError::BadMessage`] when it is not JSON of that shape.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(payload)
            .map_err(|e| ProtocolError::BadMessage { what: "Connect end-of-stream message", detail: e.to_string() })
    }
}

/// Parses the body of a failed unary call as a Connect error, if it is one (code as a string).
#[must_use]
pub fn parse_error_body(body: &[u8]) -> Option<ConnectError> {
    #[derive(Deserialize)]
    struct Raw {
        code: serde_json::Value,
        #[serde(default)]
        message: String,
    }
    let raw: Raw = serde_json::from_slice(body).ok()?;
    let code = raw.code.as_str()?.to_owned();
    Some(ConnectError { code, message: raw.message })
}

/// The end-of-stream envelope a server writes: `{}`, or `{"error": {...}}`.
#[must_use]
pub fn end_stream_frame(error: Option<&ConnectError>) -> Vec<u8> {
    let body = match error {
        Some(e) => serde_json::json!({ "error": e }).to_string(),
        None => "{}".to_owned(),
    };
    envelope(FLAG_END_STREAM, body.as_bytes())
}

/// Why the single request message of a server-streaming call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No complete envelope.
    #[error("the Connect request is not one complete envelope ({0} bytes): send [flags][u32 length][JSON]")]
    Incomplete(usize),
    /// Compression was never negotiated.
    #[error("the Connect request is compressed; send it uncompressed")]
    Compressed,
    /// More than the allowed size.
    #[error("the Connect request message is {0} bytes, more than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Bytes after the message.
    #[error("the Connect request has {0} bytes after its message; a server-streaming call takes exactly one")]
    Trailing(usize),
}

/// The one message of a server-streaming request body (`[flags][len][JSON]`), size-checked.
///
/// # Errors
/// [`RequestError`] for a body that is not exactly one uncompressed envelope within [`MAX_MESSAGE_BYTES`].
pub fn decode_request(body: &[u8]) -> Result<&[u8], RequestError> {
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(RequestError::Incomplete(body.len()));
    };
    if head[0] & FLAG_COMPRESSED != 0 {
        return Err(RequestError::Compressed);
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(RequestError::TooLarge(len));
    }
    if rest.len() < len {
        return Err(RequestError::Incomplete(body.len()));
    }
    let (message, trailing) = rest.split_at(len);
    // A client may close its side with an empty end-of-stream envelope; anything else is refused.
    let empty_end = trailing.len() == 5 && trailing[0] & FLAG_END_STREAM != 0 && trailing[1..] == [0; 4];
    if !trailing.is_empty() && !empty_end {
        return Err(RequestError::Trailing(trailing.len()));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let mut wire = envelope(0, br#"{"event":{"start":{"pid":7}}}"#);
        wire.extend(envelope(0, br#"{"event":{"data":{"stdout":"aGk="}}}"#));
        wire.extend(envelope(FLAG_END_STREAM, b"{}"));
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut d = FrameDecoder::new();
            let mut frames = Vec::new();
            for part in wire.chunks(chunk) {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            d.finish().unwrap();
            assert_eq!(frames.len(), 3, "chunk size {chunk}");
            assert!(frames[2].is_end());
            assert_eq!(frames[0].payload, br#"{"event":{"start":{"pid":7}}}"#);
        }
    }

    #[test]
    fn broken_streams_are_errors() {
        let mut d = FrameDecoder::new();
        d.push(&envelope(0, b"{}"));
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.finish(), Err(ProtocolError::MissingEnd));

        let mut d = FrameDecoder::new();
        let whole = envelope(0, b"{\"a\":1}");
        d.push(&whole[..whole.len() - 2]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.finish(), Err(ProtocolError::Truncated(whole.len() - 2)));

        let mut d = FrameDecoder::new();
        d.push(&envelope(FLAG_COMPRESSED, b"xx"));
        assert_eq!(d.next_frame(), Err(ProtocolError::Compressed));

        let mut d = FrameDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(ProtocolError::TooLarge(_))));

        let mut d = FrameDecoder::new();
        d.push(&envelope(FLAG_END_STREAM, b"{}"));
        d.push(&envelope(0, b"{}"));
        assert!(d.next_frame().unwrap().unwrap().is_end());
        assert_eq!(d.next_frame(), Err(ProtocolError::DataAfterEnd));
    }

    #[test]
    fn server_side_framing() {
        let frame = envelope(0, br#"{"a":1}"#);
        assert_eq!(decode_request(&frame).unwrap(), br#"{"a":1}"#);
        assert!(matches!(decode_request(&frame[..4]), Err(RequestError::Incomplete(4))));
        assert!(matches!(decode_request(&frame[..frame.len() - 1]), Err(RequestError::Incomplete(_))));
        let mut two = frame.clone();
        two.extend(envelope(0, b"{}"));
        assert!(matches!(decode_request(&two), Err(RequestError::Trailing(_))));
        assert!(matches!(decode_request(&[0, 0xff, 0xff, 0xff, 0xff]), Err(RequestError::TooLarge(_))));
        assert!(matches!(decode_request(&envelope(FLAG_COMPRESSED, b"x")), Err(RequestError::Compressed)));
        let end = end_stream_frame(Some(&ConnectError { code: "not_found".into(), message: "gone".into() }));
        let mut d = FrameDecoder::new();
        d.push(&end);
        let f = d.next_frame().unwrap().unwrap();
        assert!(f.is_end());
        assert_eq!(EndStream::parse(&f.payload).unwrap().error.unwrap().code, "not_found");
        assert_eq!(end_stream_frame(None), envelope(FLAG_END_STREAM, b"{}"));
    }

    #[test]
    fn end_stream_and_error_bodies() {
        assert_eq!(EndStream::parse(b"").unwrap(), EndStream::default());
        assert_eq!(EndStream::parse(b"{}").unwrap(), EndStream::default());
        let e = EndStream::parse(
            br#"{"error":{"code":"not_found","message":"process with pid 9 not found"},"metadata":{}}"#,
        )
        .unwrap();
        assert_eq!(e.error.unwrap().code, "not_found");
        assert!(EndStream::parse(b"nope").is_err());
        assert_eq!(
            parse_error_body(br#"{"code":"unauthenticated","message":"bad token"}"#).unwrap().message,
            "bad token"
        );
        assert_eq!(parse_error_body(br#"{"code":502,"message":"sandbox not found"}"#), None);
        assert_eq!(parse_error_body(b"<html>"), None);
    }
}
