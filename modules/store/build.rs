//! Embeds `migrations/NNNN_name.sql` (at the workspace root) into the binary, in version order.
//! Adding a migration is adding a file; nothing else needs to change.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read when the script runs, not baked in when it is compiled: a target directory shared by
    // two checkouts (a CI clone beside the working copy) reuses the compiled script.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("../../migrations");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<(u32, String, String)> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("migrations/ exists at the workspace root") {
        let path = entry.expect("readable migrations/ entry").path();
        println!("cargo::rerun-if-changed={}", path.display());
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        let (number, name) = stem
            .split_once('_')
            .unwrap_or_else(|| panic!("migrations/{file}: expected NNNN_name.sql"));
        let version: u32 = number
            .parse()
            .unwrap_or_else(|_| panic!("migrations/{file}: {number:?} is not a version number"));
        if let Some(other) = files.iter().find(|f| f.0 == version) {
            panic!(
                "migrations/{file}: version {version} is also used by {}",
                other.1
            );
        }
        let abs = path.canonicalize().unwrap().display().to_string();
        files.push((version, name.to_owned(), abs));
    }
    files.sort();
    for (i, (version, name, _)) in files.iter().enumerate() {
        assert_eq!(
            *version as usize,
            i + 1,
            "migrations/: versions must run 1, 2, 3, ... without gaps; {name} has {version}"
        );
    }
    let mut out =
        String::from("/// Every migration, in order.\npub static MIGRATIONS: &[Migration] = &[\n");
    for (version, name, abs) in &files {
        writeln!(
            out,
            "    Migration {{ version: {version}, name: {name:?}, sql: include_str!({abs:?}) }},"
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}
