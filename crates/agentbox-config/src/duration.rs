//! Serde support for durations written as plain seconds (`90`, `1.5`) or as
//! human-readable strings (`"90s"`, `"5m"`, `"1h 30m"`).
//!
//! Whole seconds serialize as an integer; anything finer serializes as a
//! humantime string, so a round trip is lossless.

use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// A duration that is neither a number of seconds nor a humantime string.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    /// A number that is not a valid count of seconds (negative, or too large).
    #[error("invalid duration {text:?}: must be a non-negative number of seconds")]
    Seconds {
        /// The text as given.
        text: String,
        /// Why the number is not a duration.
        #[source]
        source: std::time::TryFromFloatSecsError,
    },
    /// Text that humantime does not accept.
    #[error("invalid duration {text:?}: {source} (use seconds like 90, or units like \"90s\", \"5m\", \"1h\")")]
    Text {
        /// The text as given.
        text: String,
        /// humantime's reason.
        #[source]
        source: humantime::DurationError,
    },
}

/// Parses a duration from its textual form: plain seconds or humantime.
///
/// # Errors
/// A [`DurationError`] naming the accepted forms when `s` is neither.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|source| DurationError::Seconds { text: s.to_owned(), source });
    }
    humantime::parse_duration(t).map_err(|source| DurationError::Text { text: s.to_owned(), source })
}

/// Serializes a duration as integer seconds, or a humantime string if it has a fraction.
///
/// # Errors
/// Propagates the serializer's error.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_nanos() == 0 {
        s.serialize_u64(d.as_secs())
    } else {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Deserializes a duration from seconds (integer or float) or a humantime string.
///
/// # Errors
/// Fails on negative numbers and unparseable strings.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("seconds as a number, or a duration string like \"90s\" or \"5m\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("duration must not be negative, got {v}")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v)
                .map_err(|_| E::custom(format!("duration must be a non-negative number of seconds, got {v}")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// The OpenAPI schema of a duration as [`serialize`] writes it: whole seconds, or a humantime string.
#[cfg(feature = "utoipa")]
#[must_use]
pub fn schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).description(Some("Whole seconds")))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("A duration with a fraction of a second, such as `1m 30s 500ms`")),
        )
        .into()
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn parses_every_accepted_form() {
        assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse("soon").unwrap_err().to_string().contains("\"5m\""));
        assert!(parse("-3").is_err());
    }
}
