//! Parsing JSON that came from inside a sandbox.
//!
//! Callers cap the bytes first; this caps what parsing them may cost. A JSON value in memory takes
//! about 32 bytes per element however short its text (`0,` is two bytes), so a few MiB of `[0,0,...]`
//! would become hundreds of MiB on the host. [`parse`] counts the elements (the commas, colons and
//! opening brackets outside strings) in one pass over the bytes, without allocating, and refuses the
//! text before parsing it when there are more than the budget allows.

use serde::de::DeserializeOwned;

/// Why untrusted JSON was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UntrustedJsonError {
    /// More elements than the budget.
    #[error("it holds more than {0} JSON elements")]
    TooManyElements(usize),
    /// Not JSON of the expected shape.
    #[error("it is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// How many elements `bytes` holds at least: commas, colons and opening brackets outside strings.
pub(crate) fn elements(bytes: &[u8]) -> usize {
    let mut count = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => count += 1,
                _ => {}
            }
        }
    }
    count
}

/// Parses `bytes` into `T` if they hold at most `max_elements` elements.
///
/// # Errors
/// [`UntrustedJsonError::TooManyElements`] before any parsing, or the parser's error.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8], max_elements: usize) -> Result<T, UntrustedJsonError> {
    if elements(bytes) > max_elements {
        return Err(UntrustedJsonError::TooManyElements(max_elements));
    }
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn elements_outside_strings_are_counted() {
        assert_eq!(elements(b"[0,0,0]"), 3);
        assert_eq!(elements(br#"{"a,b:[{": 1, "c": [2, 3]}"#), 6);
        assert_eq!(elements(br#""\",[[[""#), 0);
        assert_eq!(elements(b""), 0);
    }

    #[test]
    fn a_dense_array_is_refused_before_parsing() {
        let dense = format!("[{}0]", "0,".repeat(10_000));
        assert!(matches!(parse::<Value>(dense.as_bytes(), 1000), Err(UntrustedJsonError::TooManyElements(1000))));
        assert!(parse::<Value>(dense.as_bytes(), 20_000).is_ok());
        assert!(matches!(parse::<Value>(b"[1,", 10), Err(UntrustedJsonError::Invalid(_))));
    }
}
