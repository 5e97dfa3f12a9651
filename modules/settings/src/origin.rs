//! Where a value came from: the file, or the environment variable that overrode it.

use std::path::{Path, PathBuf};

use figment::Figment;

/// The environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "PRODUCTBUILDER_";

/// "environment variable PRODUCTBUILDER_GITHUB__TOKEN" for the key `github.token`.
pub fn env_origin(key: &str) -> String {
    format!(
        "environment variable {ENV_PREFIX}{}",
        key.replace('.', "__").to_uppercase()
    )
}

/// Where a key's value came from: the file, or the environment variable that overrode it.
pub fn origin_of(figment: &Figment, key: &str, file: &Path) -> String {
    Origins::new(figment, file).of(key)
}

/// The main file as loaded: the origin of each key, and paths relative to the file.
#[derive(Clone, Copy)]
pub struct Origins<'a> {
    figment: &'a Figment,
    file: &'a Path,
}

impl<'a> Origins<'a> {
    pub fn new(figment: &'a Figment, file: &'a Path) -> Origins<'a> {
        Origins { figment, file }
    }

    /// The file itself, as an origin (for a missing key, which has no value to come from).
    pub fn file(&self) -> String {
        self.file.display().to_string()
    }

    /// Whether a key's value came from an environment variable rather than the file.
    pub fn from_env(&self, key: &str) -> bool {
        self.figment
            .find_metadata(key)
            .is_some_and(|meta| meta.name.contains("environment"))
    }

    /// The origin of `key`: the environment variable that set it, else the file.
    pub fn of(&self, key: &str) -> String {
        if self.from_env(key) {
            env_origin(key)
        } else {
            self.file()
        }
    }

    /// `path` as written in the file: relative paths are taken from the file's directory.
    pub fn relative(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(path)
        }
    }
}
