//! figment's errors as problems that name the file (or variable) and the key, with the nearest
//! known key for a misspelt one.

use figment::error::Kind;

use crate::{Problem, env_origin};

/// Turns figment's error chain into problems that name the file (or variable) and the key.
pub fn from_figment(error: figment::Error, default_origin: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    for e in error {
        let origin = match &e.metadata {
            Some(meta) => match &meta.source {
                Some(figment::Source::File(path)) => path.display().to_string(),
                _ if meta.name.contains("environment") => env_origin(&e.path.join(".")),
                _ => default_origin.to_owned(),
            },
            None => default_origin.to_owned(),
        };
        let mut key = (!e.path.is_empty()).then(|| e.path.join("."));
        let message = match &e.kind {
            Kind::UnknownField(field, expected) => {
                key = Some(with_field(&e.path, field));
                let mut m = "unknown key".to_owned();
                if let Some(near) = nearest(field, expected) {
                    m.push_str(&format!("; did you mean `{near}`?"));
                }
                if !expected.is_empty() {
                    m.push_str(&format!(" (known keys here: {})", expected.join(", ")));
                }
                m
            }
            Kind::MissingField(field) => {
                key = Some(with_field(&e.path, field));
                "missing; this key is required".to_owned()
            }
            Kind::UnknownVariant(found, expected) => {
                format!("{found:?} is not one of: {}", expected.join(", "))
            }
            Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
            Kind::Message(m) => m.trim().replace('\n', " "),
            other => other.to_string(),
        };
        problems.push(Problem {
            origin,
            key,
            message,
        });
    }
    problems
}

/// The dotted key of `field` under `path`; figment sometimes already ends the path with it.
fn with_field(path: &[String], field: &str) -> String {
    match path.last() {
        Some(last) if last == field => path.join("."),
        Some(_) => format!("{}.{field}", path.join(".")),
        None => field.to_owned(),
    }
}

/// The known key closest to a misspelt one, if any is close enough to be a likely typo.
pub fn nearest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(typed, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_key_only_suggests_plausible_typos() {
        assert_eq!(nearest("tokn", &["token", "api_url"]), Some("token"));
        assert_eq!(nearest("zzzzzz", &["token", "api_url"]), None);
        assert_eq!(
            nearest("poll_intervall", &["poll_interval", "previews"]),
            Some("poll_interval")
        );
    }
}
