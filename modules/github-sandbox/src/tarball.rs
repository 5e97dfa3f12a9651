//! Source archives like codeload.github.com serves them for `GET /repos/{o}/{r}/tarball/{ref}`.
//!
//! Like `git archive`, the gzipped tar starts with a pax global header whose `comment` is the
//! commit sha, then has one top directory `{owner}-{repo}-{sha7}/` with a directory entry for
//! every directory and the files (mode 0664, or 0775 for ELF binaries and scripts) below it.

use std::collections::BTreeSet;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{Builder, EntryType, Header};

use crate::world::Tree;

/// The archive's top directory name.
pub(crate) fn top_dir(owner: &str, repo: &str, sha: &str) -> String {
    let short: String = sha.chars().take(7).collect();
    format!("{owner}-{repo}-{short}")
}

/// Builds the `.tar.gz` of `tree` under `top/`, every entry dated `mtime` (unix seconds).
pub(crate) fn build(top: &str, sha: &str, tree: &Tree, mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut tar = Builder::new(GzEncoder::new(Vec::new(), Compression::default()));

    let record = pax_record("comment", sha);
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XGlobalHeader);
    header.set_mode(0o666);
    header.set_mtime(mtime);
    header.set_size(record.len() as u64);
    tar.append_data(&mut header, "pax_global_header", record.as_bytes())?;

    let mut dirs = BTreeSet::new();
    dirs.insert(format!("{top}/"));
    for path in tree.keys() {
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            dirs.insert(format!("{top}/{}/", parts[..depth].join("/")));
        }
    }
    for dir in &dirs {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Directory);
        header.set_mode(0o775);
        header.set_mtime(mtime);
        header.set_size(0);
        tar.append_data(&mut header, dir, std::io::empty())?;
    }
    for (path, content) in tree {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        // The fake keeps no file modes; git's executable bit is inferred from the content, which
        // is what a repository holding a binary or a script would have set.
        let executable = content.starts_with(b"\x7fELF") || content.starts_with(b"#!");
        header.set_mode(if executable { 0o775 } else { 0o664 });
        header.set_mtime(mtime);
        header.set_size(content.len() as u64);
        tar.append_data(&mut header, format!("{top}/{path}"), content.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// One pax extended-header record: `"<len> <key>=<value>\n"`, where `len` counts the whole
/// record including its own digits.
fn pax_record(key: &str, value: &str) -> String {
    let rest = format!(" {key}={value}\n");
    let mut len = rest.len() + 1;
    while format!("{len}{rest}").len() != len {
        len += 1;
    }
    format!("{len}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn pax_records_count_their_own_length() {
        let sha = "a".repeat(40);
        let r = pax_record("comment", &sha);
        assert_eq!(r, format!("52 comment={sha}\n"));
        assert_eq!(r.len(), 52);
    }

    #[test]
    fn archives_have_one_top_directory() {
        let mut tree = Tree::new();
        tree.insert("compose.yaml".to_string(), b"services: {}\n".to_vec());
        tree.insert("app/web/index.html".to_string(), b"<h1>hi</h1>".to_vec());
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let top = top_dir("o", "r", sha);
        assert_eq!(top, "o-r-0123456");
        let gz = build(&top, sha, &tree, 1_700_000_000).unwrap();
        let mut archive = tar::Archive::new(GzDecoder::new(gz.as_slice()));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if entry.header().entry_type() == EntryType::XGlobalHeader {
                let mut s = String::new();
                entry.read_to_string(&mut s).unwrap();
                assert!(s.contains(sha));
                continue;
            }
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "o-r-0123456/",
                "o-r-0123456/app/",
                "o-r-0123456/app/web/",
                "o-r-0123456/app/web/index.html",
                "o-r-0123456/compose.yaml",
            ]
        );
    }
}
