//! Secrets: given inline or as `<key>_file`, never both, never empty, never printed.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::{Origins, Problems};

/// A secret value. It has no `Display`, `Debug` prints a placeholder (so it cannot end up in a
/// log line or an error message by accident), and the memory is zeroed when it is dropped.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }

    /// The value, for the one place that sends it (an HTTP header, a signature check).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The largest secret file [`secret`] reads: far above any token or key.
const MAX_SECRET_FILE_BYTES: usize = 1024 * 1024;

/// Reads a secret file: at most `max_bytes` (a device like /dev/zero ends the read), UTF-8, not
/// blank, one trailing newline trimmed. Errors name the path, never the content.
pub fn read_secret_file(path: &Path, max_bytes: usize) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max_bytes as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if bytes.len() > max_bytes {
        return Err(format!(
            "secret file {} is larger than {} KiB",
            path.display(),
            max_bytes / 1024
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("secret file {} is not UTF-8 text", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!(
            "secret file {} is empty; write the secret into it",
            path.display()
        ));
    }
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The secret at `key` of the main file, given inline or as `<key>_file` (a path relative to the
/// file), never both, and never empty: an empty token would pass as "set" here and fail later as
/// a 401 far from its cause. `None` when unset or wrong (then a problem is recorded).
pub fn secret(
    p: &mut Problems,
    origins: &Origins<'_>,
    key: &str,
    inline: Option<String>,
    path: Option<PathBuf>,
) -> Option<Secret> {
    let key_file = format!("{key}_file");
    match (inline, path) {
        (Some(_), Some(_)) => {
            // Blame the environment variable when one of the two came from it: that is the
            // setting the operator is least likely to see while reading the file.
            let (key_env, other) = if origins.from_env(&key_file) {
                (key_file.as_str(), key)
            } else {
                (key, key_file.as_str())
            };
            let mut message = format!("set either `{key}` or `{key_file}`, not both");
            let (origin, other_origin) = (origins.of(key_env), origins.of(other));
            if origin != other_origin {
                message.push_str(&format!(
                    "; `{other}` is also set in {other_origin}: remove one of the two"
                ));
            }
            p.push(origin, Some(key_env), message);
            None
        }
        (Some(value), None) if value.trim().is_empty() => {
            p.push(
                origins.of(key),
                Some(key),
                "is empty; give the secret's value, or remove the key",
            );
            None
        }
        (Some(value), None) => Some(Secret::new(value)),
        (None, Some(path)) => {
            match read_secret_file(&origins.relative(path), MAX_SECRET_FILE_BYTES) {
                Ok(value) => Some(Secret::new(value)),
                Err(message) => {
                    p.push(origins.of(&key_file), Some(&key_file), message);
                    None
                }
            }
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("ghp_do_not_print");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.clone().expose(), "ghp_do_not_print");
    }

    #[test]
    fn secret_files_are_trimmed_and_never_blank_or_huge() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let ok = write("ok", b"tok\r\n");
        assert_eq!(read_secret_file(&ok, 64).unwrap(), "tok");
        for (name, bytes, want) in [
            ("blank", &b" \n"[..], "is empty; write the secret into it"),
            ("huge", &[b'x'; 2049][..], "is larger than 2 KiB"),
            ("binary", &b"\xff\xfe"[..], "is not UTF-8 text"),
        ] {
            let err = read_secret_file(&write(name, bytes), 2048).unwrap_err();
            assert!(err.ends_with(want), "{name}: {err}");
            assert!(!err.contains("xxxx"), "{err}");
        }
        let err = read_secret_file(&dir.path().join("missing"), 64).unwrap_err();
        assert!(err.starts_with("cannot read secret file "), "{err}");
    }
}
