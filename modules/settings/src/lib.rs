//! Shared configuration helpers, so that every module resolves its own section the same way.
//!
//! # Brief overview
//! - [`Problem`] and [`Problems`]: one thing wrong (origin, dotted key, message) and the list a
//!   whole resolution collects, so that one run of `check` reports everything; [`ConfigError`] is
//!   that list as an error.
//! - [`Origins`]: where a key's value came from, the file or the environment variable
//!   (`PRODUCTBUILDER_<SECTION>__<KEY>`) that overrode it, and paths relative to the file.
//! - [`parse_duration`] and the serde helpers in [`raw`]: durations as text, with the hint a bare
//!   number needs (`15` → "write `15s`").
//! - [`Secret`] and [`secret`]: a value given inline or as `<key>_file`, never both, never empty.
//! - [`nearest`] and [`from_figment`]: figment's errors as problems, with the nearest known key.
//!
//! # Why modules share these
//! The file format is one thing to the operator: every module's section must name its file, key
//! and fix the same way, whichever crate resolves it.

mod duration;
mod figment_errors;
mod origin;
mod problem;
pub mod raw;
mod secret;
mod url;

pub use duration::{duration, parse_duration};
pub use figment_errors::{from_figment, nearest};
pub use origin::{ENV_PREFIX, Origins, env_origin, origin_of};
pub use problem::{ConfigError, Problem, Problems};
pub use secret::{Secret, read_secret_file, secret};
pub use url::check_url;
