//! Safe extraction of a pull request's source tarball.
//!
//! # Threat model
//! The tarball GitHub serves for `GET /repos/{o}/{r}/tarball/{sha}` is a gzipped tar of a tree that
//! the pull request's author controls, fork or not. Its *shape* is produced by `git archive`, but
//! nothing here relies on that: the bytes may come from a tampered download, a misbehaving proxy or
//! a test, so every byte is treated as hostile. The attacker wins if extraction
//!
//! - writes, creates or changes anything outside `dest` (absolute paths, `..`, Windows prefixes,
//!   writing *through* a symbolic link, symbolic links that point out of the tree and are later
//!   followed by whatever uses the checkout, hard links to files elsewhere);
//! - exhausts the host (gzip bombs, huge metadata records, millions of entries, endless paths);
//! - creates things that are dangerous to use (device files, FIFOs, setuid or setgid files, files
//!   owned by someone else);
//! - makes two tools disagree about what the archive contains (an entry replacing an earlier one, a
//!   pax `size` disagreeing with the header, a GNU long name *and* a pax path);
//! - or crashes the daemon (panics on malformed input).
//!
//! The caller (not an attacker) chooses `dest`, and nothing else writes below `dest` while
//! [`extract`] runs.
//!
//! # Why not `tar::Archive::unpack`
//! `unpack` follows the `tar` crate's own rules: it merges into an existing directory, overwrites
//! existing files, silently skips entries it considers unsafe (so a check would pass on a partial
//! tree), creates hard links and preserves permission bits it is told to, has no budget for bytes
//! or entries, and reads pax and GNU long-name records into memory without a bound. We want each
//! rule to be ours, explicit, tested and reported with the offending path. So the archive is read
//! with `entries().raw(true)` (metadata records are parsed here, with a size bound) and every entry
//! is written by this module.
//!
//! # Rules
//! - `dest` must be an empty directory, or not exist (it is then created).
//! - Budgets ([`Limits`]): compressed bytes read from the reader; file bytes as they are written
//!   (counted, not taken from headers — but a header announcing too much is refused before anything
//!   is written); entries (every tar member except the pax/GNU records that describe the next
//!   member, plus every directory created implicitly as a parent); path length. The decompressed tar stream as a whole (headers, metadata, padding) is
//!   also bounded, by `max_unpacked_bytes` plus a fixed allowance per entry, so data we skip
//!   instead of writing cannot be a bomb either.
//! - The first path component is the archive's single top directory (`owner-repo-sha7/` from
//!   GitHub) and is stripped, whatever its name. Anything else at the top level (a second
//!   directory, a file) is refused; pax global headers (`pax_global_header`) are metadata, skipped.
//! - Paths: no absolute path, no `..` component, no NUL byte, no Windows drive (`C:`) or backslash
//!   prefix or backslash `..`, at most `max_path_len` bytes. `.` and empty components are ignored.
//! - Entry types: regular files, directories and symbolic links only. Hard links, character and
//!   block devices, FIFOs, sparse files and anything unknown are refused.
//! - Symbolic links: the target must be relative and, evaluated lexically from the link's own
//!   directory, stay inside the tree. The link is created with the *lexically normalised* target
//!   (`a/../b` becomes `b`), so the kernel cannot resolve it differently when `a` is itself a link:
//!   every created link is some `..` (at most its depth) followed by plain names, which keeps every
//!   resolution inside the tree.
//! - Nothing is ever written through a symbolic link: before creating anything, every ancestor
//!   inside `dest` is checked with `symlink_metadata` (a link there is an error; each directory is
//!   checked once and remembered, since nothing can replace it afterwards), and files are opened
//!   with `create_new`, which never follows a link at the final component. So `link -> sub`
//!   followed by `link/file` is refused, not written into `sub`.
//! - No entry may replace another: a second entry with the same path is an error, and so is an
//!   entry colliding with something already created (a file where a directory is needed).
//! - Permissions are never taken from the archive: files are `0o644`, or `0o755` if the header has
//!   any execute bit; directories `0o755`; set explicitly, so the umask does not matter. Ownership,
//!   setuid, setgid, sticky bits, extended attributes and mtimes are ignored.
//! - Every error names the entry (sanitised for display: control and bidirectional characters are
//!   escaped, the length is bounded) and the rule. After the last entry the rest of the gzip stream
//!   is read, so a corrupt trailer (bad CRC, truncation) is an error too.
//!
//! On error `dest` holds a partial tree and the caller deletes it; nothing outside `dest` was
//! touched, and no process-wide state (umask, working directory) is ever changed.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

/// Budgets against hostile archives. The defaults fit any repository we expect to preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from the reader (the `.tar.gz` as downloaded).
    pub max_compressed_bytes: u64,
    /// Bytes of file contents written, all files together.
    pub max_unpacked_bytes: u64,
    /// Tar members, counting directories, links and pax global headers, but not the pax or GNU
    /// long-name records that only describe the next member; plus the directories created for
    /// members whose parent has no directory member before them (so that deep paths cannot
    /// create unbounded numbers of directories).
    pub max_entries: u64,
    /// Bytes of an entry's path as stored in the archive (top directory included), and of a
    /// symbolic link's target.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_compressed_bytes: 100 * 1024 * 1024,
            max_unpacked_bytes: 1024 * 1024 * 1024,
            max_entries: 50_000,
            max_path_len: 1024,
        }
    }
}

/// What [`extract`] created below `dest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files and symbolic links created.
    pub files: u64,
    /// Directories created (from directory entries or as parents of other entries; `dest` itself
    /// is not counted).
    pub dirs: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// Why an archive was refused. Entry paths are the paths as stored in the archive (top directory
/// included), quoted and sanitised for display; `at` fields describe a position such as
/// `entry "o-r-abc1234/src/main.rs"` or `the entry after "…"`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error(
        "cannot extract the source archive into {}: {reason}; pass an empty directory or one that \
         does not exist yet",
        dest.display()
    )]
    Destination { dest: PathBuf, reason: String },

    #[error(
        "the source archive is not a valid .tar.gz (at {at}: {detail}); it was truncated or \
         corrupted in transit, or is not a GitHub tarball: download it again"
    )]
    Corrupt { at: String, detail: String },

    #[error(
        "the source archive is larger than {limit} bytes compressed (max_compressed_bytes, reached \
         at {at}); raise the limit if the repository is legitimately that large"
    )]
    CompressedTooLarge { at: String, limit: u64 },

    #[error(
        "the source archive unpacks to more than {limit} bytes (max_unpacked_bytes, reached at \
         {at}); remove large files from the repository or raise the limit"
    )]
    UnpackedTooLarge { at: String, limit: u64 },

    #[error(
        "the source archive has more than {limit} entries (max_entries, reached at {entry}); \
         raise the limit if the repository is legitimately that large"
    )]
    TooManyEntries { entry: String, limit: u64 },

    #[error(
        "the source archive contains a path of {len} bytes, longer than max_path_len ({limit}): \
         {entry}; shorten the path in the pull request or raise the limit"
    )]
    PathTooLong {
        entry: String,
        len: usize,
        limit: usize,
    },

    #[error(
        "the source archive contains a path with a NUL byte: {entry}; git cannot produce this, so \
         the archive is not a genuine GitHub tarball and is refused"
    )]
    NulInPath { entry: String },

    #[error(
        "the source archive contains an absolute path: {entry}; git archives only hold relative \
         paths, so the archive is not a genuine GitHub tarball and is refused"
    )]
    AbsolutePath { entry: String },

    #[error(
        "the source archive contains a path with a `..` component: {entry}; entries may not climb \
         out of the tree, so the archive is refused"
    )]
    ParentDirectory { entry: String },

    #[error(
        "the source archive contains a path with a Windows drive, backslash prefix or backslash \
         `..`: {entry}; rename it in the pull request"
    )]
    WindowsPath { entry: String },

    #[error(
        "the source archive contains {entry} outside its top directory {top}; a GitHub tarball has \
         exactly one top directory, so the archive is refused"
    )]
    OutsideTopDirectory { entry: String, top: String },

    #[error(
        "the source archive contains {entry} more than once; a later entry may not replace an \
         earlier one, so the archive is refused"
    )]
    Duplicate { entry: String },

    #[error(
        "the source archive contains a hard link {entry} -> {target}; hard links are never \
         extracted (git cannot store them), so the archive is refused"
    )]
    HardLink { entry: String, target: String },

    #[error(
        "the source archive contains a {kind} {entry}; device files and FIFOs are never extracted \
         (git cannot store them), so the archive is refused"
    )]
    SpecialFile { entry: String, kind: &'static str },

    #[error(
        "the source archive contains {entry} of unsupported type {kind}; only regular files, \
         directories and symbolic links are extracted"
    )]
    UnsupportedEntry { entry: String, kind: String },

    #[error(
        "the source archive contains a symbolic link {entry} -> {target} that {reason}; links must \
         stay inside the repository: make it relative and inside, or remove it, in the pull request"
    )]
    SymlinkEscapes {
        entry: String,
        target: String,
        reason: &'static str,
    },

    #[error(
        "the source archive contains {entry}, which would be written through the symbolic link \
         {link}; nothing is written through links, so the archive is refused"
    )]
    ThroughSymlink { entry: String, link: String },

    #[error(
        "the source archive contains {entry}, which collides with an earlier entry ({reason}); the \
         archive is refused"
    )]
    PathConflict { entry: String, reason: String },

    #[error(
        "the source archive contains a malformed entry {entry}: {detail}; the archive is not a \
         genuine GitHub tarball or is corrupted: download it again"
    )]
    Malformed { entry: String, detail: String },

    #[error(
        "extracting {entry} from the source archive: {action} failed: {source}; check the free \
         space and permissions of the destination"
    )]
    Io {
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Largest pax, GNU long-name or pax global record read. Real ones hold a path or a commit id.
const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// Decompressed tar bytes allowed per entry on top of file contents: its header, padding, and
/// the pax/long-name records in front of it (for paths up to a few KiB).
const STREAM_ALLOWANCE_PER_ENTRY: u64 = 8 * 1024;
/// Decompressed tar bytes allowed once: the end-of-archive blocks and record padding.
const STREAM_ALLOWANCE_FIXED: u64 = 64 * 1024;
/// Longest path shown in an error message, in characters.
const MAX_SHOWN_CHARS: usize = 160;
/// Copy buffer for file contents.
const COPY_BUFFER: usize = 64 * 1024;

/// Extracts the gzipped tarball read from `reader` into `dest` (empty or not yet existing),
/// stripping the top directory and enforcing `limits` and the rules in the module documentation.
///
/// On error `dest` may hold part of the tree: the caller deletes it.
pub fn extract(reader: impl Read, dest: &Path, limits: &Limits) -> Result<Extracted, ArchiveError> {
    prepare_destination(dest)?;

    let tripped = Rc::new(Cell::new(None));
    let compressed = Capped::new(
        reader,
        limits.max_compressed_bytes,
        Budget::Compressed,
        &tripped,
    );
    let stream_cap = limits
        .max_unpacked_bytes
        .saturating_add(
            limits
                .max_entries
                .saturating_mul(STREAM_ALLOWANCE_PER_ENTRY),
        )
        .saturating_add(STREAM_ALLOWANCE_FIXED);
    let decompressed = Capped::new(
        GzDecoder::new(compressed),
        stream_cap,
        Budget::Unpacked,
        &tripped,
    );
    let mut archive = tar::Archive::new(decompressed);

    let mut x = Extractor {
        dest,
        limits,
        tripped: Rc::clone(&tripped),
        at: Position::Start,
        top: None,
        seen: HashSet::new(),
        verified: HashSet::new(),
        pending: Pending::default(),
        entries: 0,
        out: Extracted::default(),
        buffer: vec![0; COPY_BUFFER],
    };
    {
        let entries = archive.entries().map_err(|e| x.read_error(e))?.raw(true);
        for entry in entries {
            let entry = entry.map_err(|e| x.read_error(e))?;
            x.entry(entry)?;
        }
    }
    x.finish()?;

    // Read what follows the end-of-archive marker (padding, then the gzip trailer) so that a bad
    // checksum or a truncated stream is noticed.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| x.read_error(e))?;
    Ok(x.out)
}

fn prepare_destination(dest: &Path) -> Result<(), ArchiveError> {
    let refuse = |reason: String| ArchiveError::Destination {
        dest: dest.to_path_buf(),
        reason,
    };
    match fs::metadata(dest) {
        Ok(meta) if !meta.is_dir() => Err(refuse("it exists and is not a directory".into())),
        Ok(_) => {
            let mut listing =
                fs::read_dir(dest).map_err(|e| refuse(format!("it cannot be listed: {e}")))?;
            if listing.next().is_some() {
                Err(refuse("it is not empty".into()))
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(|e| refuse(format!("it cannot be created: {e}")))
        }
        Err(e) => Err(refuse(format!("it cannot be inspected: {e}"))),
    }
}

// -- byte budgets -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Compressed,
    Unpacked,
}

/// A reader that yields at most `remaining` bytes and fails (recording which budget tripped) if
/// the inner reader has more. Reading exactly the budget is fine.
struct Capped<R> {
    inner: R,
    remaining: u64,
    budget: Budget,
    tripped: Rc<Cell<Option<Budget>>>,
}

impl<R> Capped<R> {
    fn new(inner: R, cap: u64, budget: Budget, tripped: &Rc<Cell<Option<Budget>>>) -> Self {
        Capped {
            inner,
            remaining: cap,
            budget,
            tripped: Rc::clone(tripped),
        }
    }

    fn trip(&self) -> io::Error {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(self.budget));
        }
        io::Error::other(format!("{:?} byte budget exceeded", self.budget))
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            if self.tripped.get() == Some(self.budget) {
                return Err(self.trip());
            }
            // At the budget: fine if the inner reader is at its end, an error otherwise.
            let mut probe = [0u8; 1];
            return loop {
                match self.inner.read(&mut probe) {
                    Ok(0) => break Ok(0),
                    Ok(_) => break Err(self.trip()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
        }
        let max = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

// -- the extractor ------------------------------------------------------------------------------

/// Where reading was when something went wrong, for messages.
enum Position {
    Start,
    In(String),
    After(String),
}

impl Position {
    fn describe(&self) -> String {
        match self {
            Position::Start => "the first entry".to_owned(),
            Position::In(path) => format!("entry {path}"),
            Position::After(path) => format!("the entry after {path}"),
        }
    }
}

/// Pax and GNU long-name records describing the next member.
#[derive(Default)]
struct Pending {
    pax: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }
}

/// What a pax extended header says about the next member (the keys we use).
#[derive(Default)]
struct PaxFields {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
}

struct Extractor<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    tripped: Rc<Cell<Option<Budget>>>,
    at: Position,
    /// Name of the archive's top directory, from the first member.
    top: Option<Vec<u8>>,
    /// Paths (below the top directory) of all members so far.
    seen: HashSet<Vec<u8>>,
    /// Directories (below the top directory) known to be real directories, not links.
    verified: HashSet<Vec<u8>>,
    pending: Pending,
    entries: u64,
    out: Extracted,
    buffer: Vec<u8>,
}

impl Extractor<'_> {
    /// An error while reading the archive: a tripped budget, or a corrupt stream.
    fn read_error(&self, e: io::Error) -> ArchiveError {
        let at = self.at.describe();
        match self.tripped.get() {
            Some(Budget::Compressed) => ArchiveError::CompressedTooLarge {
                at,
                limit: self.limits.max_compressed_bytes,
            },
            Some(Budget::Unpacked) => ArchiveError::UnpackedTooLarge {
                at,
                limit: self.limits.max_unpacked_bytes,
            },
            None => ArchiveError::Corrupt {
                at,
                detail: sanitise(e.to_string().as_bytes(), false),
            },
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let kind = entry.header().entry_type();
        let header_path = shown(&entry.path_bytes());

        // Records describing the next member.
        if matches!(
            kind,
            EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            // Named by its position: its own name ("././@LongLink", "PaxHeaders.0/…", nothing)
            // means little. `self.at` stays on the previous member.
            let record = match kind {
                EntryType::XHeader => "pax extended header",
                EntryType::GNULongName => "GNU long-name record",
                _ => "GNU long-link record",
            };
            let record = self.record_name(record, &header_path);
            let slot = match kind {
                EntryType::XHeader => &self.pending.pax,
                EntryType::GNULongName => &self.pending.long_name,
                _ => &self.pending.long_link,
            };
            if slot.is_some() {
                return Err(malformed(
                    &record,
                    "two records of the same kind describe one member",
                ));
            }
            let data = self.read_metadata(&mut entry, &record)?;
            let slot = match kind {
                EntryType::XHeader => &mut self.pending.pax,
                EntryType::GNULongName => &mut self.pending.long_name,
                _ => &mut self.pending.long_link,
            };
            *slot = Some(data);
            return Ok(());
        }

        // A member: resolve its path and link target from the records in front of it.
        let pending = std::mem::take(&mut self.pending);
        if kind == EntryType::XGlobalHeader {
            self.at = Position::In(header_path.clone());
            self.count(&header_path)?;
            if !pending.is_empty() {
                return Err(malformed(
                    &header_path,
                    "a pax or GNU long-name record precedes a pax global header",
                ));
            }
            if entry.size() > MAX_METADATA_BYTES {
                return Err(malformed(
                    &header_path,
                    &format!(
                        "a pax global header of {} bytes (at most {MAX_METADATA_BYTES})",
                        entry.size()
                    ),
                ));
            }
            // Metadata only (GitHub puts the commit id there): skipped.
            self.at = Position::After(header_path);
            return Ok(());
        }
        let pax = match &pending.pax {
            Some(data) => parse_pax(data).map_err(|detail| malformed(&header_path, &detail))?,
            None => PaxFields::default(),
        };
        let raw_path: Vec<u8> = match (pending.long_name, pax.path) {
            (Some(_), Some(_)) => {
                return Err(malformed(
                    &header_path,
                    "both a GNU long name and a pax path name this member",
                ));
            }
            (Some(long), None) => trim_trailing_nuls(long),
            (None, Some(path)) => path,
            (None, None) => entry.path_bytes().into_owned(),
        };
        let entry_name = shown(&raw_path);
        self.at = Position::In(entry_name.clone());
        self.count(&entry_name)?;
        if let Some(size) = pax.size
            && size != entry.size()
        {
            if size > self.budget_left() {
                return Err(self.unpacked_too_large());
            }
            return Err(malformed(
                &entry_name,
                &format!(
                    "its pax size ({size}) disagrees with its header size ({})",
                    entry.size()
                ),
            ));
        }

        let components = self.check_path(&raw_path, &entry_name)?;
        let Some((top, rel)) = components.split_first() else {
            return Err(malformed(&entry_name, "its path names no file"));
        };
        match &self.top {
            None => self.top = Some(top.to_vec()),
            Some(known) if known.as_slice() == *top => {}
            Some(known) => {
                return Err(ArchiveError::OutsideTopDirectory {
                    entry: entry_name,
                    top: shown(known),
                });
            }
        }
        if rel.is_empty() && kind != EntryType::Directory {
            return Err(ArchiveError::OutsideTopDirectory {
                entry: entry_name,
                top: shown(top),
            });
        }
        if !self.seen.insert(rel.join(&b'/')) {
            return Err(ArchiveError::Duplicate { entry: entry_name });
        }

        match kind {
            EntryType::Directory => {
                self.no_data(&entry, &entry_name, "a directory")?;
                if let Some((name, parents)) = rel.split_last() {
                    let parent = self.parents(parents, &entry_name)?;
                    self.directory(&parent.join(OsStr::from_bytes(name)), &entry_name)?;
                    self.verified.insert(rel.join(&b'/'));
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                self.file(&mut entry, rel, &entry_name)?;
            }
            EntryType::Symlink => {
                self.no_data(&entry, &entry_name, "a symbolic link")?;
                let target = match (pending.long_link, pax.linkpath) {
                    (Some(_), Some(_)) => {
                        return Err(malformed(
                            &entry_name,
                            "both a GNU long link and a pax linkpath name its target",
                        ));
                    }
                    (Some(long), None) => trim_trailing_nuls(long),
                    (None, Some(target)) => target,
                    (None, None) => entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default(),
                };
                self.symlink(rel, &target, &entry_name)?;
            }
            EntryType::Link => {
                let target = match (pending.long_link, pax.linkpath) {
                    (Some(long), _) => trim_trailing_nuls(long),
                    (None, Some(target)) => target,
                    (None, None) => entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default(),
                };
                return Err(ArchiveError::HardLink {
                    entry: entry_name,
                    target: shown(&target),
                });
            }
            EntryType::Char => return Err(special(entry_name, "character device")),
            EntryType::Block => return Err(special(entry_name, "block device")),
            EntryType::Fifo => return Err(special(entry_name, "FIFO")),
            EntryType::GNUSparse => {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: entry_name,
                    kind: "GNU sparse file".to_owned(),
                });
            }
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: entry_name,
                    kind: format!("'{}'", sanitise(&[other.as_byte()], false)),
                });
            }
        }
        self.at = Position::After(entry_name);
        Ok(())
    }

    /// Called after the last member.
    fn finish(&self) -> Result<(), ArchiveError> {
        if !self.pending.is_empty() {
            return Err(malformed(
                &self.record_name("pax or GNU long-name record", "\"\""),
                "it describes no member (the archive ends after it)",
            ));
        }
        if self.top.is_none() {
            return Err(ArchiveError::Corrupt {
                at: self.at.describe(),
                detail: "the archive has no entries".to_owned(),
            });
        }
        Ok(())
    }

    fn count(&mut self, entry_name: &str) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                entry: entry_name.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn budget_left(&self) -> u64 {
        self.limits
            .max_unpacked_bytes
            .saturating_sub(self.out.bytes)
    }

    fn unpacked_too_large(&self) -> ArchiveError {
        ArchiveError::UnpackedTooLarge {
            at: self.at.describe(),
            limit: self.limits.max_unpacked_bytes,
        }
    }

    /// `pax extended header "PaxHeaders/x" (after "top/previous")`, for messages.
    fn record_name(&self, record: &str, header_path: &str) -> String {
        let place = match &self.at {
            Position::Start => "at the start".to_owned(),
            Position::In(path) | Position::After(path) => format!("after {path}"),
        };
        if header_path == "\"\"" {
            format!("{record} ({place})")
        } else {
            format!("{record} {header_path} ({place})")
        }
    }

    fn read_metadata<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        record: &str,
    ) -> Result<Vec<u8>, ArchiveError> {
        let size = entry.size();
        if size > MAX_METADATA_BYTES {
            return Err(malformed(
                record,
                &format!("{size} bytes of metadata (at most {MAX_METADATA_BYTES})"),
            ));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| self.read_error(e))?;
        if data.len() as u64 != size {
            return Err(self.truncated(size, data.len() as u64));
        }
        Ok(data)
    }

    fn truncated(&self, expected: u64, got: u64) -> ArchiveError {
        ArchiveError::Corrupt {
            at: self.at.describe(),
            detail: format!("the archive ends after {got} of the entry's {expected} bytes"),
        }
    }

    fn no_data<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        entry_name: &str,
        what: &str,
    ) -> Result<(), ArchiveError> {
        if entry.size() != 0 {
            return Err(malformed(
                entry_name,
                &format!("{what} that carries {} bytes of data", entry.size()),
            ));
        }
        Ok(())
    }

    /// Checks a member's path and splits it into its components (`.` and empty ones dropped).
    fn check_path<'p>(
        &self,
        raw: &'p [u8],
        entry_name: &str,
    ) -> Result<Vec<&'p [u8]>, ArchiveError> {
        let entry = || entry_name.to_owned();
        if raw.len() > self.limits.max_path_len {
            return Err(ArchiveError::PathTooLong {
                entry: entry(),
                len: raw.len(),
                limit: self.limits.max_path_len,
            });
        }
        if raw.is_empty() {
            return Err(malformed(entry_name, "its path is empty"));
        }
        if raw.contains(&0) {
            return Err(ArchiveError::NulInPath { entry: entry() });
        }
        if raw.starts_with(b"/") {
            return Err(ArchiveError::AbsolutePath { entry: entry() });
        }
        let components: Vec<&[u8]> = raw
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        if components.iter().any(|c| *c == b"..") {
            return Err(ArchiveError::ParentDirectory { entry: entry() });
        }
        let windows = raw.starts_with(b"\\")
            || components.first().is_some_and(|c| is_drive(c))
            || components.get(1).is_some_and(|c| is_drive(c))
            || raw.split(|b| *b == b'/' || *b == b'\\').any(|c| c == b"..");
        if windows {
            return Err(ArchiveError::WindowsPath { entry: entry() });
        }
        Ok(components)
    }

    /// Makes sure the directories `dirs` (below `dest`) exist as real directories, creating the
    /// missing ones (each counts as an entry); a symbolic link or a file among them is an error.
    /// Returns their path.
    ///
    /// Each directory is checked with `symlink_metadata` once and then remembered in `verified`:
    /// nothing ever replaces a directory (no entry may, see `seen`, and every creation fails on an
    /// existing name), so a verified directory stays one. Re-checking every ancestor of every
    /// entry would cost O(depth²) path lookups per entry, which a hostile archive of deep paths
    /// would turn into minutes.
    fn parents(&mut self, dirs: &[&[u8]], entry_name: &str) -> Result<PathBuf, ArchiveError> {
        // `joined[..ends[i]]` is the relative path of `dirs[..=i]`.
        let joined = dirs.join(&b'/');
        let ends: Vec<usize> = dirs
            .iter()
            .scan(0, |end, name| {
                *end += name.len() + usize::from(*end > 0);
                Some(*end)
            })
            .collect();
        let known = ends
            .iter()
            .rposition(|end| self.verified.contains(&joined[..*end]))
            .map_or(0, |i| i + 1);
        let mut path = match known.checked_sub(1) {
            Some(i) => self.dest.join(OsStr::from_bytes(&joined[..ends[i]])),
            None => self.dest.to_path_buf(),
        };
        for (name, end) in dirs.iter().zip(&ends).skip(known) {
            path.push(OsStr::from_bytes(name));
            let here = &joined[..*end];
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ArchiveError::ThroughSymlink {
                        entry: entry_name.to_owned(),
                        link: shown(here),
                    });
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ArchiveError::PathConflict {
                        entry: entry_name.to_owned(),
                        reason: format!("{} is a file, not a directory", shown(here)),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.count(entry_name)?;
                    self.make_directory(&path, entry_name)?;
                }
                Err(e) => return Err(io_error(entry_name, "inspecting a parent directory", e)),
            }
            self.verified.insert(here.to_vec());
        }
        Ok(path)
    }

    /// Creates the directory `path` (its parent exists and is real), or accepts it if it was
    /// created earlier as a parent of another entry.
    fn directory(&mut self, path: &Path, entry_name: &str) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(ArchiveError::PathConflict {
                entry: entry_name.to_owned(),
                reason: "a file or link of that name exists".to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.make_directory(path, entry_name),
            Err(e) => Err(io_error(entry_name, "inspecting a directory", e)),
        }
    }

    /// Creates the directory `path` with mode 0o755.
    fn make_directory(&mut self, path: &Path, entry_name: &str) -> Result<(), ArchiveError> {
        DirBuilder::new()
            .mode(0o755)
            .create(path)
            .map_err(|e| io_error(entry_name, "creating a directory", e))?;
        // The umask may have removed bits: set them exactly. `path` was just created by us as a
        // directory, so this does not follow anything planted by the archive.
        fs::set_permissions(path, Permissions::from_mode(0o755))
            .map_err(|e| io_error(entry_name, "setting a directory's permissions", e))?;
        self.out.dirs += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &[&[u8]],
        entry_name: &str,
    ) -> Result<(), ArchiveError> {
        let size = entry.size();
        // Fail early on what the header announces; what is written is counted below anyway.
        if size > self.budget_left() {
            return Err(self.unpacked_too_large());
        }
        let header_mode = entry
            .header()
            .mode()
            .map_err(|e| malformed(entry_name, &format!("its mode is unreadable: {e}")))?;
        let mode = if header_mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let Some((name, parents)) = rel.split_last() else {
            return Err(malformed(entry_name, "its path names no file"));
        };
        let path = self
            .parents(parents, entry_name)?
            .join(OsStr::from_bytes(name));
        // `create_new` is O_CREAT|O_EXCL: an existing file, directory or (even dangling) link at
        // `path` is an error and is never followed.
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ArchiveError::PathConflict {
                    entry: entry_name.to_owned(),
                    reason: "a directory or link of that name exists".to_owned(),
                });
            }
            Err(e) => return Err(io_error(entry_name, "creating a file", e)),
        };
        // On the open handle (fchmod), before any data: exact bits whatever the umask, never
        // through a path, and right even if the copy below fails.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io_error(entry_name, "setting a file's permissions", e))?;
        self.out.files += 1;
        let written = self.copy(entry, &mut file, entry_name)?;
        if written != size {
            return Err(self.truncated(size, written));
        }
        Ok(())
    }

    /// Copies the entry's data into `file`, refusing (before writing) any byte past the budget.
    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        entry_name: &str,
    ) -> Result<u64, ArchiveError> {
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => return Ok(written),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            if n as u64 > self.budget_left() {
                return Err(self.unpacked_too_large());
            }
            file.write_all(&self.buffer[..n])
                .map_err(|e| io_error(entry_name, "writing a file", e))?;
            self.out.bytes += n as u64;
            written += n as u64;
        }
    }

    fn symlink(
        &mut self,
        rel: &[&[u8]],
        target: &[u8],
        entry_name: &str,
    ) -> Result<(), ArchiveError> {
        let escapes = |reason| ArchiveError::SymlinkEscapes {
            entry: entry_name.to_owned(),
            target: shown(target),
            reason,
        };
        if target.is_empty() {
            return Err(malformed(entry_name, "a symbolic link without a target"));
        }
        if target.len() > self.limits.max_path_len {
            return Err(malformed(
                entry_name,
                &format!(
                    "a symbolic link target of {} bytes (max_path_len is {})",
                    target.len(),
                    self.limits.max_path_len
                ),
            ));
        }
        if target.contains(&0) {
            return Err(malformed(
                entry_name,
                "a symbolic link target with a NUL byte",
            ));
        }
        let Some((name, parents)) = rel.split_last() else {
            return Err(malformed(entry_name, "its path names no file"));
        };
        let normalised = normalise_link_target(parents.len(), target).map_err(escapes)?;
        let path = self
            .parents(parents, entry_name)?
            .join(OsStr::from_bytes(name));
        match std::os::unix::fs::symlink(OsStr::from_bytes(&normalised), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ArchiveError::PathConflict {
                    entry: entry_name.to_owned(),
                    reason: "a directory of that name exists".to_owned(),
                });
            }
            Err(e) => return Err(io_error(entry_name, "creating a symbolic link", e)),
        }
        self.out.files += 1;
        Ok(())
    }
}

/// The target of a link in a directory `depth` levels below the root, evaluated lexically and
/// rewritten as `../` (at most `depth` times) followed by plain names; or why it escapes.
fn normalise_link_target(depth: usize, target: &[u8]) -> Result<Vec<u8>, &'static str> {
    if target.starts_with(b"/") {
        return Err("is absolute");
    }
    let first = target.split(|b| *b == b'/').next().unwrap_or_default();
    if target.starts_with(b"\\") || is_drive(first) {
        return Err("is a Windows absolute path");
    }
    if target
        .split(|b| *b == b'/')
        .any(|c| c != b".." && c.split(|b| *b == b'\\').any(|part| part == b".."))
    {
        return Err("climbs with Windows (backslash) separators");
    }
    let mut ups = 0usize;
    let mut names: Vec<&[u8]> = Vec::new();
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                if names.pop().is_none() {
                    ups += 1;
                    if ups > depth {
                        return Err("climbs above the top of the repository");
                    }
                }
            }
            name => names.push(name),
        }
    }
    let mut out = Vec::with_capacity(target.len());
    for _ in 0..ups {
        out.extend_from_slice(b"../");
    }
    out.extend_from_slice(&names.join(&b'/'));
    if out.ends_with(b"/") {
        out.pop();
    }
    if out.is_empty() {
        out.push(b'.');
    }
    Ok(out)
}

/// Parses a pax extended header (`"<len> <key>=<value>\n"` records, `len` counting the whole
/// record), keeping the keys we use and refusing what we do not support.
fn parse_pax(data: &[u8]) -> Result<PaxFields, String> {
    let mut fields = PaxFields::default();
    let mut rest = data;
    while !rest.is_empty() {
        let bad = || "its pax extended header has a malformed record".to_owned();
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let digits = &rest[..space];
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let len = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.starts_with(b"GNU.sparse.") {
            return Err("a GNU sparse file (pax format), which is not supported".to_owned());
        }
        let slot = match key {
            b"path" => &mut fields.path,
            b"linkpath" => &mut fields.linkpath,
            b"size" => {
                if fields.size.is_some() {
                    return Err("its pax header has two `size` records".to_owned());
                }
                // An empty value means "use the header's": nothing to record.
                if !value.is_empty() {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| "its pax `size` is not a number".to_owned())?;
                    fields.size = Some(size);
                }
                continue;
            }
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!(
                "its pax header has two `{}` records",
                sanitise(key, false)
            ));
        }
        if !value.is_empty() {
            *slot = Some(value.to_vec());
        }
    }
    Ok(fields)
}

/// GNU long names and links are stored NUL-terminated; NULs inside stay and are refused later.
fn trim_trailing_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// `C:`, `c:foo`: a Windows drive prefix.
fn is_drive(component: &[u8]) -> bool {
    component.len() >= 2 && component[0].is_ascii_alphabetic() && component[1] == b':'
}

/// `detail` may quote the `tar` crate's errors, which quote header fields: it is sanitised too.
fn malformed(entry: &str, detail: &str) -> ArchiveError {
    ArchiveError::Malformed {
        entry: entry.to_owned(),
        detail: sanitise(detail.as_bytes(), false),
    }
}

fn special(entry: String, kind: &'static str) -> ArchiveError {
    ArchiveError::SpecialFile { entry, kind }
}

fn io_error(entry: &str, action: &'static str, source: io::Error) -> ArchiveError {
    ArchiveError::Io {
        entry: entry.to_owned(),
        action,
        source,
    }
}

/// A path from the archive, quoted and made safe to print.
fn shown(bytes: &[u8]) -> String {
    sanitise(bytes, true)
}

/// Makes hostile bytes safe to print: invalid UTF-8 becomes U+FFFD, control and bidirectional
/// formatting characters (and, when quoting, `"` and `\`) are escaped, and the result is cut to
/// [`MAX_SHOWN_CHARS`] characters.
fn sanitise(bytes: &[u8], quote: bool) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    if quote {
        out.push('"');
    }
    for (shown, c) in text.chars().enumerate() {
        if shown == MAX_SHOWN_CHARS {
            let _ = write!(out, "…({} bytes in all)", bytes.len());
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else if quote && (c == '"' || c == '\\') {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    if quote {
        out.push('"');
    }
    out
}
