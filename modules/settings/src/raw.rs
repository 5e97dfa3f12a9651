//! Serde helpers for raw (as typed) configuration structs: `#[serde(deserialize_with = ...)]`.

use serde::{Deserialize, Deserializer};

/// Environment overrides arrive as strings (we keep them raw so that a numeric-looking token
/// stays a string); numeric keys accept both forms.
pub fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }
    match Option::<NumberOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(s)) => {
            s.trim().parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("expected a whole number, found {s:?}"))
            })
        }
    }
}

/// A duration is written as text (`"15s"`); a bare number has no unit, so instead of serde's
/// "expected a string" the operator is shown what to write.
pub fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Whole(i64),
        Fraction(f64),
        Other(serde::de::IgnoredAny),
    }
    let number = match Option::<TextOrNumber>::deserialize(d)? {
        None => return Ok(None),
        Some(TextOrNumber::Text(s)) => return Ok(Some(s)),
        Some(TextOrNumber::Whole(n)) => n.to_string(),
        Some(TextOrNumber::Fraction(x)) => x.to_string(),
        Some(TextOrNumber::Other(_)) => {
            return Err(serde::de::Error::custom(
                "expected a duration string like \"30s\", \"5m\" or \"2h\"",
            ));
        }
    };
    Err(serde::de::Error::custom(format!(
        "{number} has no unit; write it as a duration string like \"{number}s\""
    )))
}
