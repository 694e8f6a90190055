//! What the host and the in-sandbox browser driver say to each other.
//!
//! The host sends one [`Request`] per call as the client execution's stdin. The driver answers
//! on the client's stdout with a [`Reply`] envelope (compact JSON, one line), a newline, then the
//! reply's blob (a screenshot's base64 text) as raw bytes. The host reads that stdout as
//! ordinary execution output, through agent frames, and stops at [`Limits::reply_bytes`]; it
//! parses only the envelope, capped at [`Limits::envelope_bytes`], so a hostile driver can cost
//! the host at most a fixed amount of memory. The blob is checked to be base64 text and kept as
//! one string.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::BrowserConfig;
use super::error::BrowserError;
use crate::error::ToolErrorKind;

/// Largest envelope (the JSON part of a reply) the host parses. Its largest honest content is a
/// snapshot page or extracted text (1 MiB each at most), escaped.
pub(crate) const ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

/// Most JSON elements the host parses in an envelope (about 32 MiB once parsed). An honest envelope
/// holds at most one evaluation result of 1 MiB, which has fewer.
pub(crate) const ENVELOPE_ELEMENTS: usize = 1 << 20;

/// Largest request the driver reads.
pub(crate) const REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The caps on a reply, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest envelope.
    pub envelope_bytes: usize,
    /// Largest whole reply: envelope, newline and blob.
    pub reply_bytes: usize,
}

impl Limits {
    /// The caps for a configuration.
    pub fn of(cfg: &BrowserConfig) -> Self {
        Self { envelope_bytes: ENVELOPE_BYTES, reply_bytes: ENVELOPE_BYTES + 1 + cfg.max_screenshot_bytes }
    }
}

/// One call, host to driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    /// The tool's configuration (how to start Chromium, time limits, sizes).
    pub config: BrowserConfig,
    /// Whether the sandbox has network access.
    pub network_enabled: bool,
    /// What the sandbox lacks for a browser, as a sentence for error messages (empty when nothing).
    pub resources_hint: String,
    /// The action, as validated by the host (paths already resolved).
    pub action: Value,
}

/// A failure, driver to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    /// What kind of failure.
    pub kind: ToolErrorKind,
    /// The message for the model.
    pub message: String,
}

impl From<BrowserError> for WireError {
    fn from(e: BrowserError) -> Self {
        let t = crate::error::ToolError::from(e);
        Self { kind: t.kind, message: t.message }
    }
}

/// One reply's envelope, driver to host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reply {
    /// The action's result, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Map<String, Value>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// The result field the blob after the envelope belongs in (`data_base64`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_field: Option<String>,
}

/// The blob fields a reply may carry.
const BLOB_FIELDS: &[&str] = &["data_base64"];

/// Encodes a reply: the envelope, a newline, then the blob taken out of `result[blob_field]`.
pub(crate) fn encode_reply(outcome: Result<Map<String, Value>, WireError>) -> Vec<u8> {
    let (reply, blob) = match outcome {
        Ok(mut result) => {
            let mut blob = Vec::new();
            let mut blob_field = None;
            for f in BLOB_FIELDS {
                if let Some(Value::String(s)) = result.remove(*f) {
                    blob = s.into_bytes();
                    blob_field = Some((*f).to_owned());
                    break;
                }
            }
            (Reply { result: Some(result), error: None, blob_field }, blob)
        }
        Err(e) => (Reply { result: None, error: Some(e), blob_field: None }, Vec::new()),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| {
        br#"{"error":{"kind":"failed","message":"the browser driver could not encode its reply"}}"#.to_vec()
    });
    out.push(b'\n');
    out.extend_from_slice(&blob);
    out
}

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Nothing came back.
    #[error("the browser driver sent no reply")]
    Empty,
    /// The envelope is larger than its cap.
    #[error("the browser driver's reply header is larger than {0} bytes")]
    EnvelopeTooLarge(usize),
    /// The envelope is not a reply.
    #[error("the browser driver sent an invalid reply: {0}")]
    Invalid(String),
    /// The blob is not base64 text or has no field.
    #[error("the browser driver sent invalid image data")]
    BadBlob,
}

/// Decodes a reply already capped at [`Limits::reply_bytes`]; the envelope is parsed only when it is
/// within `limits.envelope_bytes`. The blob stays in `bytes`' buffer (no copy of a screenshot).
pub(crate) fn decode_reply(
    mut bytes: Vec<u8>,
    limits: Limits,
) -> Result<Result<Map<String, Value>, WireError>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let scan = &bytes[..bytes.len().min(limits.envelope_bytes + 1)];
    let Some(nl) = scan.iter().position(|&b| b == b'\n') else {
        return Err(if bytes.len() > limits.envelope_bytes {
            DecodeError::EnvelopeTooLarge(limits.envelope_bytes)
        } else {
            DecodeError::Invalid("no end of the reply header".into())
        });
    };
    let reply: Reply =
        crate::untrusted::parse(&bytes[..nl], ENVELOPE_ELEMENTS).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    bytes.drain(..=nl);
    let blob = bytes;
    match (reply.result, reply.error) {
        (Some(mut result), None) => {
            match reply.blob_field {
                Some(field) if BLOB_FIELDS.contains(&field.as_str()) => {
                    let is_base64 = blob.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                    if !is_base64 {
                        return Err(DecodeError::BadBlob);
                    }
                    let text = String::from_utf8(blob).map_err(|_| DecodeError::BadBlob)?;
                    result.insert(field, Value::String(text));
                }
                Some(_) => return Err(DecodeError::BadBlob),
                None if !blob.is_empty() => return Err(DecodeError::BadBlob),
                None => {}
            }
            Ok(Ok(result))
        }
        (None, Some(e)) if blob.is_empty() => Ok(Err(e)),
        _ => Err(DecodeError::Invalid("a reply must hold exactly one of a result and an error".into())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: Limits = Limits { envelope_bytes: 1024, reply_bytes: 4096 };

    #[test]
    fn replies_round_trip_with_their_blob() {
        let mut result = Map::new();
        result.insert("width".into(), json!(1280));
        result.insert("data_base64".into(), json!("iVBORw0KGgo="));
        let bytes = encode_reply(Ok(result.clone()));
        assert_eq!(decode_reply(bytes, LIMITS), Ok(Ok(result)));
        let err = WireError { kind: ToolErrorKind::Timeout, message: "slow".into() };
        assert_eq!(decode_reply(encode_reply(Err(err.clone())), LIMITS), Ok(Err(err)));
    }

    #[test]
    fn hostile_replies_are_refused() {
        assert_eq!(decode_reply(Vec::new(), LIMITS), Err(DecodeError::Empty));
        assert_eq!(decode_reply(vec![b' '; 2000], LIMITS), Err(DecodeError::EnvelopeTooLarge(1024)));
        assert!(matches!(decode_reply(b"[0,0]\n".to_vec(), LIMITS), Err(DecodeError::Invalid(_))));
        let dense = format!("{{\"result\":{{\"r\":[{}0]}}}}\n", "0,".repeat(ENVELOPE_ELEMENTS));
        let roomy = Limits { envelope_bytes: dense.len(), reply_bytes: dense.len() };
        assert!(
            matches!(decode_reply(dense.clone().into_bytes(), roomy), Err(DecodeError::Invalid(m)) if m.contains("elements"))
        );
        assert!(matches!(decode_reply(b"{}\n".to_vec(), LIMITS), Err(DecodeError::Invalid(_))));
        assert_eq!(decode_reply(b"{\"result\":{}}\nxx".to_vec(), LIMITS), Err(DecodeError::BadBlob));
        assert_eq!(
            decode_reply(b"{\"result\":{},\"blob_field\":\"data_base64\"}\n\"}".to_vec(), LIMITS),
            Err(DecodeError::BadBlob)
        );
        assert_eq!(
            decode_reply(b"{\"result\":{},\"blob_field\":\"title\"}\nAA".to_vec(), LIMITS),
            Err(DecodeError::BadBlob)
        );
    }
}
