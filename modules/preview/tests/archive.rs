//! `archive::extract` against well-formed and hostile tarballs, built byte by byte (raw headers,
//! so that nothing the `tar` crate's builder would refuse is out of reach).
//!
//! Every run extracts into `root/dest` next to `root/canary`; afterwards `root` must hold nothing
//! else, the canary must be untouched, and every symbolic link below `dest` must resolve inside it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use productbuilder_preview::archive::{ArchiveError, Extracted, Limits, extract};
use tar::{EntryType, Header};

/// The archive's top directory, as GitHub names it (`owner-repo-sha7`).
const TOP: &str = "octo-repo-abc1234";
const MIB: u64 = 1024 * 1024;

fn t(path: &str) -> String {
    format!("{TOP}/{path}")
}

// -- building archives --------------------------------------------------------------------------

/// A tar stream; headers are written as given (raw name bytes, checksum recomputed).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// A GitHub-like start: the pax global header carrying the commit, then the top directory.
    fn github() -> Self {
        let mut tar = Tar::new();
        tar.global();
        tar.dir(&format!("{TOP}/"));
        tar
    }

    fn header(kind: EntryType, name: &[u8], size: u64, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        let field = &mut h.as_old_mut().name;
        assert!(
            name.len() <= field.len(),
            "use pax() or long_name() for long names"
        );
        field[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn raw(&mut self, header: &Header, data: &[u8]) -> &mut Self {
        self.0.append(header, data).unwrap();
        self
    }

    fn entry(&mut self, kind: EntryType, name: &str, data: &[u8], mode: u32) -> &mut Self {
        let h = Self::header(kind, name.as_bytes(), data.len() as u64, mode);
        self.raw(&h, data)
    }

    fn global(&mut self) -> &mut Self {
        let record = format!("52 comment={}\n", "a".repeat(40));
        assert_eq!(record.len(), 52);
        self.entry(
            EntryType::XGlobalHeader,
            "pax_global_header",
            record.as_bytes(),
            0o666,
        )
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(EntryType::Directory, name, b"", 0o775)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, name, data, 0o664)
    }

    fn file_mode(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.entry(EntryType::Regular, name, data, mode)
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &[u8]) -> &mut Self {
        let mut h = Self::header(kind, name.as_bytes(), 0, 0o777);
        h.set_link_name_literal(target).unwrap();
        h.set_cksum();
        self.raw(&h, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target.as_bytes())
    }

    /// A pax extended header for the next member.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    /// A GNU long-name record for the next member.
    fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        self.entry(EntryType::GNULongName, "././@LongLink", &data, 0o644)
    }

    fn tar_bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }

    fn gz(self) -> Vec<u8> {
        gzip(&self.tar_bytes())
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift64), incompressible enough for the size tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// -- the sandbox --------------------------------------------------------------------------------

struct Sandbox {
    root: tempfile::TempDir,
    dest: PathBuf,
}

const CANARY: &[u8] = b"nothing may touch this\n";

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("canary")).unwrap();
        fs::write(root.path().join("canary/secret.txt"), CANARY).unwrap();
        let dest = root.path().join("dest");
        Sandbox { root, dest }
    }

    fn extract(&self, gz: &[u8], limits: &Limits) -> Result<Extracted, ArchiveError> {
        let result = extract(gz, &self.dest, limits);
        self.assert_contained();
        result
    }

    /// Nothing new next to `dest`, the canary intact, every link below `dest` inside it.
    fn assert_contained(&self) {
        let mut names: Vec<String> = fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest")
            .collect();
        names.sort();
        assert_eq!(names, ["canary"], "something was created outside dest");
        let canary: Vec<_> = fs::read_dir(self.root.path().join("canary"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(canary, ["secret.txt"], "the canary directory changed");
        assert_eq!(
            fs::read(self.root.path().join("canary/secret.txt")).unwrap(),
            CANARY
        );
        if self.dest.is_dir() {
            assert_links_inside(&self.dest);
        }
    }
}

/// Every symbolic link below `dest` that resolves at all resolves inside `dest`.
fn assert_links_inside(dest: &Path) {
    let root = fs::canonicalize(dest).unwrap();
    for (path, meta) in walk(dest) {
        if meta.file_type().is_symlink()
            && let Ok(resolved) = fs::canonicalize(&path)
        {
            assert!(
                resolved.starts_with(&root),
                "{} resolves outside dest, to {}",
                path.display(),
                resolved.display()
            );
        }
    }
}

/// Everything below `dir`, links not followed.
fn walk(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta));
        }
    }
    out
}

/// The tree below `dest`: relative path -> "dir 755", "file 644 <contents>", "link -> target".
fn tree(dest: &Path) -> BTreeMap<String, String> {
    walk(dest)
        .into_iter()
        .map(|(path, meta)| {
            let rel = path
                .strip_prefix(dest)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                format!("dir {mode:o}")
            } else {
                let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
                format!("file {mode:o} {text}")
            };
            (rel, what)
        })
        .collect()
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

// -- well-formed archives -----------------------------------------------------------------------

#[test]
fn a_github_like_archive_is_extracted_with_the_top_directory_stripped() {
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/deep.txt");
    let mut tar = Tar::github();
    tar.dir(&t("src/"))
        .dir(&t("src/nested/"))
        .file(&t("src/nested/lib.rs"), b"pub fn f() {}\n")
        .file(&t("README.md"), b"# hi\n")
        // No directory entry for bin/: created as a parent.
        .file_mode(&t("bin/run.sh"), b"#!/bin/sh\n", 0o775)
        .symlink(&t("readme"), "README.md")
        .symlink(&t("src/nested/up"), "../../README.md")
        .symlink(&t("lib"), "src/nested")
        .symlink(&t("here"), ".");
    // A long path through a pax header (as git archive writes them) and one through a GNU
    // long-name record.
    tar.pax(&[
        ("path", t(&long_file).as_bytes()),
        ("mtime", b"1700000000.5"),
    ])
    .file("ignored-by-pax", b"pax\n");
    let gnu_name = format!("{}/gnu.txt", "g".repeat(110));
    tar.long_name(t(&gnu_name).as_bytes())
        .file("ignored-by-long-name", b"gnu\n");
    tar.file(&t("unicode-é.txt"), b"\xc3\xa9\n");

    let sandbox = Sandbox::new();
    let extracted = sandbox
        .extract(&tar.gz(), &Limits::default())
        .expect("a well-formed archive extracts");

    let got = tree(&sandbox.dest);
    let mut want: BTreeMap<String, String> = [
        ("src", "dir 755"),
        ("src/nested", "dir 755"),
        ("src/nested/lib.rs", "file 644 pub fn f() {}\n"),
        ("src/nested/up", "link -> ../../README.md"),
        ("README.md", "file 644 # hi\n"),
        ("bin", "dir 755"),
        ("bin/run.sh", "file 755 #!/bin/sh\n"),
        ("readme", "link -> README.md"),
        ("lib", "link -> src/nested"),
        ("here", "link -> ."),
        ("unicode-é.txt", "file 644 é\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    want.insert(long_dir.clone(), "dir 755".into());
    want.insert(long_file, "file 644 pax\n".into());
    want.insert("g".repeat(110), "dir 755".into());
    want.insert(gnu_name, "file 644 gnu\n".into());
    assert_eq!(got, want);
    assert!(!sandbox.dest.join("pax_global_header").exists());
    assert!(!sandbox.dest.join(TOP).exists());
    assert_eq!(
        fs::read_to_string(sandbox.dest.join("src/nested/up")).unwrap(),
        "# hi\n"
    );

    assert_eq!(
        extracted,
        Extracted {
            files: 10, // 6 regular files, 4 symbolic links
            dirs: 5,
            bytes: (14 + 5 + 10 + 4 + 4 + 3) as u64,
        }
    );
}

#[test]
fn setuid_setgid_sticky_and_restrictive_modes_are_never_preserved() {
    let mut tar = Tar::github();
    tar.file_mode(&t("setuid"), b"x", 0o4755)
        .file_mode(&t("setgid"), b"x", 0o2644)
        .file_mode(&t("secret"), b"x", 0o600)
        .file_mode(&t("odd-exec"), b"x", 0o7001)
        .file_mode(&t("nothing"), b"x", 0o000)
        .entry(EntryType::Directory, &t("sticky/"), b"", 0o1777)
        .entry(EntryType::Directory, &t("closed/"), b"", 0o000)
        .file(&t("closed/inside"), b"x");
    let sandbox = Sandbox::new();
    sandbox.extract(&tar.gz(), &Limits::default()).unwrap();
    let mode = |p: &str| {
        fs::symlink_metadata(sandbox.dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("setuid"), 0o755);
    assert_eq!(mode("setgid"), 0o644);
    assert_eq!(mode("secret"), 0o644);
    assert_eq!(mode("odd-exec"), 0o755);
    assert_eq!(mode("nothing"), 0o644);
    assert_eq!(mode("sticky"), 0o755);
    assert_eq!(mode("closed"), 0o755);
    assert_eq!(mode("closed/inside"), 0o644);
}

#[test]
fn link_targets_are_normalised_so_links_through_links_cannot_climb_out() {
    // `d/up -> ..` is the root. Resolved by the kernel, `d/up/..` would be the root's parent and
    // `d/up/../../x` a file two levels above the root; lexically both stay inside, and the links
    // are created with the lexical result.
    let mut tar = Tar::github();
    tar.dir(&t("d/"))
        .symlink(&t("d/up"), "..")
        .symlink(&t("esc"), "d/up/..")
        .symlink(&t("esc2"), "d/up/../../x")
        .symlink(&t("dotty"), "./d/./up/")
        .symlink(&t("d/self"), "../d/");
    let sandbox = Sandbox::new();
    sandbox.extract(&tar.gz(), &Limits::default()).unwrap();
    let target = |p: &str| fs::read_link(sandbox.dest.join(p)).unwrap();
    assert_eq!(target("d/up"), Path::new(".."));
    assert_eq!(target("esc"), Path::new("d"));
    assert_eq!(target("esc2"), Path::new("x"));
    assert_eq!(target("dotty"), Path::new("d/up"));
    assert_eq!(target("d/self"), Path::new("../d"));
}

#[test]
fn the_destination_may_exist_if_empty_but_not_hold_anything() {
    let gz = {
        let mut tar = Tar::github();
        tar.file(&t("a"), b"a");
        tar.gz()
    };

    let sandbox = Sandbox::new();
    fs::create_dir(&sandbox.dest).unwrap();
    sandbox.extract(&gz, &Limits::default()).unwrap();
    assert_eq!(fs::read(sandbox.dest.join("a")).unwrap(), b"a");

    let sandbox = Sandbox::new();
    fs::create_dir(&sandbox.dest).unwrap();
    fs::write(sandbox.dest.join("old"), b"old").unwrap();
    let err = sandbox.extract(&gz, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Destination { .. }), "{err:?}");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(!sandbox.dest.join("a").exists());

    let sandbox = Sandbox::new();
    fs::write(&sandbox.dest, b"a file").unwrap();
    let err = sandbox.extract(&gz, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Destination { .. }), "{err:?}");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

// -- hostile archives, one rule each ------------------------------------------------------------

type Build = fn(&mut Tar);
type Expect = fn(&ArchiveError) -> bool;

struct Case {
    name: &'static str,
    build: Build,
    limits: Limits,
    expect: Expect,
    /// Substrings the message must contain (the entry, the rule).
    mentions: &'static [&'static str],
}

fn case(
    name: &'static str,
    build: Build,
    expect: Expect,
    mentions: &'static [&'static str],
) -> Case {
    Case {
        name,
        build,
        limits: Limits::default(),
        expect,
        mentions,
    }
}

fn cases() -> Vec<Case> {
    use ArchiveError as E;
    vec![
        case(
            "absolute path",
            |t| {
                t.file("/etc/passwd", b"root::0:0::/:/bin/sh\n");
            },
            |e| matches!(e, E::AbsolutePath { .. }),
            &["absolute path", "\"/etc/passwd\""],
        ),
        case(
            "absolute path after the top directory",
            |t| {
                t.file(&self::t("a"), b"a").file("/tmp/evil", b"x");
            },
            |e| matches!(e, E::AbsolutePath { .. }),
            &["absolute path", "/tmp/evil"],
        ),
        case(
            "../ escape",
            |t| {
                t.file("../escape.txt", b"x");
            },
            |e| matches!(e, E::ParentDirectory { .. }),
            &["`..`", "\"../escape.txt\""],
        ),
        case(
            "a/../../x",
            |t| {
                t.file(&self::t("a/../../x"), b"x");
            },
            |e| matches!(e, E::ParentDirectory { .. }),
            &["`..`", "a/../../x"],
        ),
        case(
            "`..` in a GNU long name",
            |t| {
                t.long_name(self::t("../../../../etc/cron.d/evil").as_bytes())
                    .file("innocent", b"* * * * * root sh\n");
            },
            |e| matches!(e, E::ParentDirectory { .. }),
            &["`..`", "../../../../etc/cron.d/evil"],
        ),
        case(
            "absolute path in a pax header",
            |t| {
                t.pax(&[("path", b"/root/.ssh/authorized_keys")])
                    .file(&self::t("innocent"), b"ssh-ed25519 AAAA\n");
            },
            |e| matches!(e, E::AbsolutePath { .. }),
            &["absolute path", "/root/.ssh/authorized_keys"],
        ),
        case(
            "symlink to /etc/passwd",
            |t| {
                t.symlink(&self::t("passwd"), "/etc/passwd");
            },
            |e| matches!(e, E::SymlinkEscapes { .. }),
            &[
                "symbolic link",
                "passwd\"",
                "\"/etc/passwd\"",
                "is absolute",
            ],
        ),
        case(
            "symlink to ../../outside",
            |t| {
                t.dir(&self::t("sub/"))
                    .symlink(&self::t("sub/link"), "../../outside");
            },
            |e| matches!(e, E::SymlinkEscapes { .. }),
            &["sub/link", "../../outside", "climbs above"],
        ),
        case(
            "symlink to the root's parent",
            |t| {
                t.symlink(&self::t("up"), "..");
            },
            |e| matches!(e, E::SymlinkEscapes { .. }),
            &["/up\"", "climbs above"],
        ),
        case(
            "symlink climbing after descending",
            |t| {
                t.symlink(&self::t("a/b/c"), "x/../../../../canary");
            },
            |e| matches!(e, E::SymlinkEscapes { .. }),
            &["a/b/c", "climbs above"],
        ),
        case(
            "symlink to a Windows path",
            |t| {
                t.symlink(&self::t("win"), "C:\\Windows\\System32");
            },
            |e| matches!(e, E::SymlinkEscapes { .. }),
            &["/win\"", "Windows"],
        ),
        case(
            "file written through an internal symlink to a directory",
            |t| {
                t.dir(&self::t("sub/"))
                    .symlink(&self::t("link"), "sub")
                    .file(&self::t("link/file"), b"x");
            },
            |e| matches!(e, E::ThroughSymlink { .. }),
            &["link/file", "through the symbolic link \"link\""],
        ),
        case(
            "directory created through an internal symlink",
            |t| {
                t.symlink(&self::t("link"), ".").dir(&self::t("link/x/"));
            },
            |e| matches!(e, E::ThroughSymlink { .. }),
            &["link/x/"],
        ),
        case(
            "hard link",
            |t| {
                t.file(&self::t("README"), b"x").link(
                    EntryType::Link,
                    &self::t("hard"),
                    self::t("README").as_bytes(),
                );
            },
            |e| matches!(e, E::HardLink { .. }),
            &["hard link", "/hard\"", "README"],
        ),
        case(
            "hard link to a file outside",
            |t| {
                t.link(EntryType::Link, &self::t("shadow"), b"/etc/shadow");
            },
            |e| matches!(e, E::HardLink { .. }),
            &["/shadow\"", "/etc/shadow"],
        ),
        case(
            "character device",
            |t| {
                t.entry(EntryType::Char, &self::t("tty"), b"", 0o666);
            },
            |e| {
                matches!(
                    e,
                    E::SpecialFile {
                        kind: "character device",
                        ..
                    }
                )
            },
            &["character device", "/tty\""],
        ),
        case(
            "block device",
            |t| {
                t.entry(EntryType::Block, &self::t("sda"), b"", 0o660);
            },
            |e| {
                matches!(
                    e,
                    E::SpecialFile {
                        kind: "block device",
                        ..
                    }
                )
            },
            &["block device", "/sda\""],
        ),
        case(
            "FIFO",
            |t| {
                t.entry(EntryType::Fifo, &self::t("pipe"), b"", 0o644);
            },
            |e| matches!(e, E::SpecialFile { kind: "FIFO", .. }),
            &["FIFO", "/pipe\""],
        ),
        case(
            "GNU sparse file",
            |t| {
                t.entry(EntryType::GNUSparse, &self::t("sparse"), b"", 0o644);
            },
            |e| matches!(e, E::UnsupportedEntry { .. }),
            &["sparse", "unsupported"],
        ),
        case(
            "pax sparse file",
            |t| {
                t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
                    .file(&self::t("sparse"), b"x");
            },
            |e| matches!(e, E::Malformed { .. }),
            &["sparse"],
        ),
        case(
            "unknown entry type",
            |t| {
                t.entry(EntryType::new(b'V'), &self::t("label"), b"", 0o644);
            },
            |e| matches!(e, E::UnsupportedEntry { .. }),
            &["/label\"", "'V'"],
        ),
        case(
            "second top-level directory",
            |t| {
                t.file(&self::t("a"), b"a")
                    .dir("other-dir/")
                    .file("other-dir/b", b"b");
            },
            |e| matches!(e, E::OutsideTopDirectory { .. }),
            &["\"other-dir/\"", TOP],
        ),
        case(
            "top-level file",
            |t| {
                t.file("README", b"x");
            },
            |e| matches!(e, E::OutsideTopDirectory { .. }),
            &["\"README\"", "outside its top directory"],
        ),
        case(
            "a regular file named like the pax global header",
            |t| {
                t.file("pax_global_header", b"52 comment=x\n");
            },
            |e| matches!(e, E::OutsideTopDirectory { .. }),
            &["\"pax_global_header\""],
        ),
        case(
            "GNU long name and pax path for one member",
            |t| {
                t.pax(&[("path", self::t("one").as_bytes())])
                    .long_name(self::t("two").as_bytes())
                    .file(&self::t("three"), b"x");
            },
            |e| matches!(e, E::Malformed { .. }),
            &["/three\"", "both a GNU long name and a pax path"],
        ),
        case(
            "two pax headers for one member",
            |t| {
                t.pax(&[("path", self::t("one").as_bytes())])
                    .pax(&[("path", self::t("two").as_bytes())])
                    .file(&self::t("three"), b"x");
            },
            |e| matches!(e, E::Malformed { .. }),
            &[
                "pax extended header (after \"octo-repo-abc1234/\")",
                "two records",
            ],
        ),
        case(
            "duplicate file",
            |t| {
                t.file(&self::t("a"), b"first")
                    .file(&self::t("a"), b"second");
            },
            |e| matches!(e, E::Duplicate { .. }),
            &["/a\"", "more than once"],
        ),
        case(
            "duplicate spelled differently",
            |t| {
                t.file(&self::t("d/a"), b"first")
                    .file(&format!("{TOP}/./d//a"), b"second");
            },
            |e| matches!(e, E::Duplicate { .. }),
            &["/./d//a\"", "more than once"],
        ),
        case(
            "file replacing a symlink",
            |t| {
                t.dir(&self::t("sub/"))
                    .symlink(&self::t("x"), "sub")
                    .file(&self::t("x"), b"x");
            },
            |e| matches!(e, E::Duplicate { .. }),
            &["/x\""],
        ),
        case(
            "duplicate directory",
            |t| {
                t.dir(&self::t("d/")).dir(&self::t("d"));
            },
            |e| matches!(e, E::Duplicate { .. }),
            &["/d\""],
        ),
        case(
            "entry below a file",
            |t| {
                t.file(&self::t("a"), b"a").file(&self::t("a/b"), b"b");
            },
            |e| matches!(e, E::PathConflict { .. }),
            &["a/b\"", "is a file"],
        ),
        case(
            "file where a directory was created",
            |t| {
                t.file(&self::t("d/x"), b"x").file(&self::t("d"), b"d");
            },
            |e| matches!(e, E::PathConflict { .. }),
            &["/d\""],
        ),
        case(
            "NUL byte in a pax path",
            |t| {
                t.pax(&[("path", format!("{TOP}/evil\0.txt").as_bytes())])
                    .file(&self::t("innocent"), b"x");
            },
            |e| matches!(e, E::NulInPath { .. }),
            &["NUL", "evil\\u{0}.txt"],
        ),
        case(
            "path too long",
            |t| {
                let long = format!("{TOP}/{}", "x/".repeat(1000));
                t.pax(&[("path", long.as_bytes())])
                    .file(&self::t("innocent"), b"x");
            },
            |e| {
                matches!(
                    e,
                    E::PathTooLong {
                        len: 2018,
                        limit: 1024,
                        ..
                    }
                )
            },
            &["2018 bytes", "x/x/x/", "bytes in all"],
        ),
        case(
            "Windows drive",
            |t| {
                t.file("C:/Windows/win.ini", b"x");
            },
            |e| matches!(e, E::WindowsPath { .. }),
            &["Windows", "C:/Windows/win.ini"],
        ),
        case(
            "Windows `..`",
            |t| {
                t.file(&self::t("..\\..\\evil.bat"), b"x");
            },
            |e| matches!(e, E::WindowsPath { .. }),
            &["Windows", "..\\\\..\\\\evil.bat"],
        ),
        case(
            "directory carrying data",
            |t| {
                t.entry(EntryType::Directory, &self::t("d/"), &[0; 4096], 0o755);
            },
            |e| matches!(e, E::Malformed { .. }),
            &["/d/\"", "4096 bytes"],
        ),
        case(
            "pax size disagreeing with the header",
            |t| {
                t.pax(&[("size", b"3")]).file(&self::t("f"), b"12345");
            },
            |e| matches!(e, E::Malformed { .. }),
            &["/f\"", "pax size"],
        ),
        case(
            "malformed pax record",
            |t| {
                t.entry(EntryType::XHeader, "PaxHeaders/f", b"99 path=x\n", 0o644)
                    .file(&self::t("f"), b"x");
            },
            |e| matches!(e, E::Malformed { .. }),
            &["/f\"", "malformed record"],
        ),
        case(
            "oversized pax record",
            |t| {
                let comment = vec![b'c'; 100_000];
                t.pax(&[("comment", &comment)]).file(&self::t("f"), b"x");
            },
            |e| matches!(e, E::Malformed { .. }),
            &[
                "pax extended header (after \"octo-repo-abc1234/\")",
                "at most 65536",
            ],
        ),
        case(
            "metadata record describing nothing",
            |t| {
                t.file(&self::t("f"), b"x").pax(&[("path", b"dangling")]);
            },
            |e| matches!(e, E::Malformed { .. }),
            &[
                "record (after \"octo-repo-abc1234/f\")",
                "describes no member",
            ],
        ),
    ]
}

#[test]
fn hostile_archives_are_refused_with_the_entry_named() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut tar = Tar::github();
        (case.build)(&mut tar);
        let sandbox = Sandbox::new();
        match sandbox.extract(&tar.gz(), &case.limits) {
            Ok(x) => failures.push(format!("{}: extracted {x:?}", case.name)),
            Err(e) => {
                let message = e.to_string();
                if !(case.expect)(&e) {
                    failures.push(format!("{}: wrong error {e:?}", case.name));
                }
                for m in case.mentions {
                    if !message.contains(m) {
                        failures.push(format!("{}: {message:?} does not mention {m:?}", case.name));
                    }
                }
                if message.chars().any(char::is_control) {
                    failures.push(format!("{}: control character in {message:?}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn nothing_is_written_through_a_symlink_even_a_dangling_one() {
    for target in ["sub", "not-yet"] {
        let mut tar = Tar::github();
        tar.dir(&t("sub/"))
            .symlink(&t("link"), target)
            .file(&t("link/file"), b"x")
            .file(&t("not-yet/file"), b"x");
        let sandbox = Sandbox::new();
        let err = sandbox.extract(&tar.gz(), &Limits::default()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::ThroughSymlink { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("link/file"), "{err}");
        assert!(!sandbox.dest.join("sub/file").exists());
        assert!(!sandbox.dest.join("not-yet").exists());
    }
}

// -- budgets ------------------------------------------------------------------------------------

#[test]
fn a_gzip_bomb_is_refused_and_nothing_larger_than_the_limit_is_written() {
    let limit = 10 * MIB;
    // A normal start, then 50 MiB of zeros streamed into the encoder.
    let mut head = Tar::github();
    head.file(&t("small"), b"small");
    let head = head.tar_bytes();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    // Without the end-of-archive blocks, so that more members follow.
    builder
        .get_mut()
        .write_all(&head[..head.len() - 1024])
        .unwrap();
    let size = 50 * MIB;
    let h = Tar::header(EntryType::Regular, t("bomb.bin").as_bytes(), size, 0o644);
    builder.append(&h, io::repeat(0).take(size)).unwrap();
    let gz = builder.into_inner().unwrap().finish().unwrap();
    assert!(gz.len() < MIB as usize, "{} bytes", gz.len());

    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&gz, &limits(|l| l.max_unpacked_bytes = limit))
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::UnpackedTooLarge { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("bomb.bin"), "{err}");
    for (path, meta) in walk(&sandbox.dest) {
        assert!(
            meta.len() <= limit,
            "{} has {} bytes",
            path.display(),
            meta.len()
        );
    }
}

#[test]
fn the_unpacked_budget_counts_all_files_together() {
    let mut tar = Tar::github();
    let four = vec![7u8; 4 * MIB as usize];
    tar.file(&t("one"), &four)
        .file(&t("two"), &four)
        .file(&t("three"), &four);
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&tar.gz(), &limits(|l| l.max_unpacked_bytes = 10 * MIB))
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::UnpackedTooLarge { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/three\""), "{err}");
    let total: u64 = walk(&sandbox.dest).iter().map(|(_, m)| m.len()).sum();
    assert!(total <= 10 * MIB, "{total}");
}

#[test]
fn metadata_and_skipped_data_count_toward_the_unpacked_budget() {
    // Each member is tiny, but each drags 60 KiB of pax comment the extractor must decompress.
    let mut tar = Tar::github();
    let comment = vec![b'c'; 60 * 1024];
    for i in 0..60 {
        tar.pax(&[("comment", &comment)])
            .file(&t(&format!("f{i}")), b"x");
    }
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(
            &tar.gz(),
            &limits(|l| {
                l.max_unpacked_bytes = MIB;
                l.max_entries = 100;
            }),
        )
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::UnpackedTooLarge { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/f"), "{err}");
}

#[test]
fn too_many_entries_are_refused() {
    let mut tar = Tar::github();
    for i in 0..10 {
        tar.file(&t(&format!("f{i}")), b"x");
    }
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&tar.gz(), &limits(|l| l.max_entries = 5))
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit: 5, .. }),
        "{err:?}"
    );
    // pax_global_header, the top directory, f0, f1, f2: the sixth is f3.
    assert!(err.to_string().contains("/f3\""), "{err}");
    assert!(!sandbox.dest.join("f3").exists());

    let sandbox = Sandbox::new();
    let mut tar = Tar::github();
    for i in 0..3 {
        tar.file(&t(&format!("f{i}")), b"x");
    }
    let ok = sandbox.extract(&tar.gz(), &limits(|l| l.max_entries = 5));
    assert!(ok.is_ok(), "exactly max_entries is fine: {ok:?}");
}

#[test]
fn directories_created_for_deep_paths_count_as_entries() {
    let deep = "a/".repeat(500);
    let one = || {
        let mut tar = Tar::github();
        tar.pax(&[("path", t(&format!("{deep}f")).as_bytes())])
            .file("f", b"x");
        tar.gz()
    };
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&one(), &limits(|l| l.max_entries = 100))
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit: 100, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("a/a/a/"), "{err}");

    // Many entries at that depth: each ancestor is checked once, not once per entry.
    let mut tar = Tar::github();
    for i in 0..500 {
        tar.pax(&[("path", t(&format!("{deep}f{i}")).as_bytes())])
            .file("f", b"x");
    }
    let sandbox = Sandbox::new();
    let x = sandbox.extract(&tar.gz(), &Limits::default()).unwrap();
    assert_eq!((x.files, x.dirs), (500, 500));
}

#[test]
fn the_compressed_size_is_capped() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tar = Tar::github();
    tar.file(&t("random.bin"), &rng.bytes(256 * 1024));
    let gz = tar.gz();
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&gz, &limits(|l| l.max_compressed_bytes = 64 * 1024))
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::CompressedTooLarge { limit: 65536, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("random.bin"), "{err}");

    let sandbox = Sandbox::new();
    let exact = gz.len() as u64;
    let ok = sandbox.extract(&gz, &limits(|l| l.max_compressed_bytes = exact));
    assert!(ok.is_ok(), "exactly max_compressed_bytes is fine: {ok:?}");
}

// -- broken streams -----------------------------------------------------------------------------

#[test]
fn truncated_and_corrupt_streams_are_errors_not_panics() {
    let mut rng = Rng(42);
    let mut tar = Tar::github();
    tar.file(&t("data.bin"), &rng.bytes(200 * 1024));
    let tar_bytes = tar.tar_bytes();
    let gz = gzip(&tar_bytes);

    // The gzip stream cut in the middle.
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&gz[..gz.len() / 2], &Limits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("data.bin"), "{err}");

    // The gzip trailer missing: the data is complete, the checksum is not there to verify it.
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&gz[..gz.len() - 4], &Limits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");

    // A complete gzip stream of a tar cut in the middle of a file.
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&gzip(&tar_bytes[..100 * 1024]), &Limits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("data.bin"), "{err}");

    // A damaged header checksum.
    let mut damaged = tar_bytes.clone();
    damaged[1024 + 10] ^= 0x20; // the name of the top directory's header
    let sandbox = Sandbox::new();
    let err = sandbox
        .extract(&gzip(&damaged), &Limits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("pax_global_header"), "{err}");

    // Garbage, and an empty archive.
    for (input, what) in [
        (rng.bytes(10_000), "garbage"),
        (Vec::new(), "nothing"),
        (gzip(b""), "an empty gzip stream"),
        (gzip(&[0; 1024]), "an empty tar"),
    ] {
        let sandbox = Sandbox::new();
        let err = sandbox.extract(&input, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Corrupt { .. }),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().contains("not a valid .tar.gz"),
            "{what}: {err}"
        );
    }
}

/// Recomputes a tar header's checksum, so that damage gets past it to the fields behind.
fn fix_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block[..512].iter().map(|b| u32::from(*b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn random_damage_never_panics_or_escapes() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut tar = Tar::github();
    tar.dir(&t("d/"))
        .file(&t("d/a.txt"), b"hello")
        .symlink(&t("d/up"), "..")
        .symlink(&t("l"), "d/up")
        .symlink(&t("m"), "d")
        .pax(&[("path", t("long/pax/name.txt").as_bytes())])
        .file("x", b"pax")
        .long_name(t("gnu/long/name.txt").as_bytes())
        .file("y", b"gnu")
        .file_mode(&t("run.sh"), b"#!/bin/sh\n", 0o755);
    let tar_bytes = tar.tar_bytes();
    let gz = gzip(&tar_bytes);
    let headers: Vec<usize> = {
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let entries = archive.entries().unwrap().raw(true);
        entries
            .map(|e| e.unwrap().raw_header_position() as usize)
            .collect()
    };
    const TYPES: &[u8] = &[
        0, b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'x', b'g', b'L', b'K', b'S', b'V',
    ];

    let root = tempfile::tempdir().unwrap();
    let small = limits(|l| {
        l.max_unpacked_bytes = MIB;
        l.max_entries = 50;
    });
    let (mut extracted, mut refused) = (0, 0);
    for i in 0..1000 {
        let input = if i % 10 == 9 {
            // Damage the compressed bytes.
            let mut bytes = gz.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            bytes
        } else {
            // Damage header fields (and sometimes data), fix the checksums, compress properly.
            let mut bytes = tar_bytes.clone();
            for _ in 0..1 + rng.below(3) {
                let h = headers[rng.below(headers.len())];
                let (field, len) = match rng.below(5) {
                    0 => (0, 100),   // name
                    1 => (157, 100), // link name
                    2 => (124, 12),  // size
                    3 => (100, 8),   // mode
                    _ => (rng.below(512), 1),
                };
                let at = h + field + rng.below(len);
                bytes[at] = match rng.below(6) {
                    0 => b'/',
                    1 => b'.',
                    2 => 0,
                    3 => b'0' + rng.below(8) as u8,
                    _ => rng.next() as u8,
                };
                if rng.below(4) == 0 {
                    bytes[h + 156] = TYPES[rng.below(TYPES.len())];
                }
            }
            if rng.below(4) == 0 {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            for &h in &headers {
                fix_checksum(&mut bytes[h..h + 512]);
            }
            if rng.below(8) == 0 {
                bytes.truncate(rng.below(bytes.len()));
            }
            gzip(&bytes)
        };
        let dest = root.path().join(format!("dest-{i}"));
        match extract(input.as_slice(), &dest, &small) {
            Ok(_) => extracted += 1,
            Err(e) => {
                refused += 1;
                let message = e.to_string();
                assert!(!message.chars().any(char::is_control), "{message:?}");
            }
        }
        if dest.is_dir() {
            assert_links_inside(&dest);
            for (path, meta) in walk(&dest) {
                let mode = meta.permissions().mode();
                assert!(
                    meta.file_type().is_symlink() || [0o644, 0o755].contains(&(mode & 0o7777)),
                    "{} has mode {mode:o}",
                    path.display()
                );
                assert!(
                    meta.is_dir() || meta.is_file() || meta.file_type().is_symlink(),
                    "{} is a special file",
                    path.display()
                );
            }
        }
    }
    for e in fs::read_dir(root.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with("dest-"),
            "{name} was created next to the destinations"
        );
    }
    // The damage must reach past the first checks, both ways.
    assert!(
        extracted > 150 && refused > 400,
        "{extracted} extracted, {refused} refused"
    );
}

// -- messages -----------------------------------------------------------------------------------

#[test]
fn paths_in_messages_are_sanitised_and_bounded() {
    let nasty = format!("{TOP}/\x1b[2J\u{202e}txt.exe\r\n");
    let mut tar = Tar::github();
    tar.file(&nasty, b"1").file(&nasty, b"2");
    let sandbox = Sandbox::new();
    let err = sandbox.extract(&tar.gz(), &Limits::default()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err:?}");
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(!message.contains('\u{202e}'), "{message:?}");
    assert!(
        message.contains("\\u{1b}[2J\\u{202e}txt.exe\\u{d}\\u{a}"),
        "{message:?}"
    );

    let long = format!("{TOP}/{}", "y".repeat(900));
    let mut tar = Tar::github();
    tar.pax(&[("path", long.as_bytes())])
        .link(EntryType::Link, "x", b"target");
    let sandbox = Sandbox::new();
    let err = sandbox.extract(&tar.gz(), &Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::HardLink { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.len() < 600, "{} bytes: {message}", message.len());
    assert!(message.contains(&format!("\"{TOP}/yyyy")), "{message}");
    assert!(
        message.contains(&format!("({} bytes in all)", long.len())),
        "{message}"
    );
}
