//! Problems: what is wrong, where, and what to do, collected over a whole resolution.

use std::fmt;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or the environment variable, the value came from.
    pub origin: String,
    /// The dotted key, when the problem is about one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// Everything wrong with the configuration, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while resolving, so that one run reports all of them.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    pub fn push(
        &mut self,
        origin: impl Into<String>,
        key: Option<&str>,
        message: impl Into<String>,
    ) {
        self.list.push(Problem {
            origin: origin.into(),
            key: key.map(str::to_owned),
            message: message.into(),
        });
    }

    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.list.extend(problems);
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.list.iter()
    }

    /// Whether a problem about `key` (or a key starting with it, such as `key_file`) was already
    /// recorded: then the key is not missing, and saying so would contradict that line.
    pub fn reported(&self, key: &str) -> bool {
        self.list
            .iter()
            .any(|x| x.key.as_deref().is_some_and(|k| k.starts_with(key)))
    }

    /// Whether a problem about exactly `key` was recorded.
    pub fn has_key(&self, key: &str) -> bool {
        self.list.iter().any(|x| x.key.as_deref() == Some(key))
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }

    /// `Ok(value)` when nothing was recorded, else every problem.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.list.is_empty() {
            Ok(value())
        } else {
            Err(ConfigError(self.list))
        }
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}
