//! The build's branch: deterministic (so a retried or resumed build finds its own branch, and a
//! second build for an issue collides with the first instead of opening a duplicate), and checked
//! to be a name git takes as a branch and nothing else (not an option, not a range, not a
//! `refs/...` path).

use super::GitError;

/// What a build's branch is named after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchFor<'a> {
    /// The issue it implements: `{prefix}issue-{n}`.
    Issue(u64),
    /// A build without an issue: `{prefix}build-{id}`.
    Build(&'a str),
}

/// `{prefix}issue-{n}` or `{prefix}build-{id}`, checked with [`check_branch`].
pub fn branch_name(prefix: &str, target: BranchFor<'_>) -> Result<String, GitError> {
    let name = match target {
        BranchFor::Issue(n) => format!("{prefix}issue-{n}"),
        BranchFor::Build(id) => format!("{prefix}build-{id}"),
    };
    check_branch(&name)?;
    Ok(name)
}

/// A branch name made of ASCII letters, digits, `-`, `_`, `.` and `/`, that git's
/// `check-ref-format` accepts (no `..`, no empty or dot-led component, no `.lock` ending), that
/// does not start with `-` and is not `HEAD`. Stricter than git, on purpose: the name goes into a
/// refspec and an argv.
pub fn check_branch(name: &str) -> Result<(), GitError> {
    let bad = |why: &'static str| {
        Err(GitError::Branch {
            name: name.into(),
            why,
        })
    };
    if name.is_empty() || name.len() > 200 {
        return bad("it must have 1 to 200 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return bad("only ASCII letters, digits, '-', '_', '.' and '/' are allowed");
    }
    if name.starts_with('-') {
        return bad("it must not start with '-'");
    }
    if name == "HEAD" || name.starts_with("refs/") {
        return bad("it must be a plain branch name");
    }
    if name.contains("..") {
        return bad("it must not contain '..'");
    }
    for component in name.split('/') {
        if component.is_empty() || component.starts_with('.') || component.ends_with(".lock") {
            return bad(
                "each '/'-separated part must be non-empty, not start with '.' nor end with '.lock'",
            );
        }
    }
    if name.ends_with('.') {
        return bad("it must not end with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            branch_name("productbuilder/", BranchFor::Issue(42)).unwrap(),
            "productbuilder/issue-42"
        );
        assert_eq!(
            branch_name("pb-", BranchFor::Build("01hx7k")).unwrap(),
            "pb-build-01hx7k"
        );
        assert!(branch_name("../", BranchFor::Issue(1)).is_err());
        assert!(branch_name("", BranchFor::Build("a b")).is_err());
    }

    #[test]
    fn checks() {
        for good in ["main", "productbuilder/issue-7", "a/b_c.d", "v1.2"] {
            assert!(check_branch(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-f",
            "HEAD",
            "refs/heads/x",
            "a..b",
            "a//b",
            "/a",
            "a/",
            ".a",
            "a/.b",
            "a.lock",
            "a.",
            "a b",
            "a:b",
            "a~1",
            "a^",
            "a@{1}",
            "a\\b",
            "a*",
            "é",
            "a\nb",
        ] {
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
        assert!(check_branch(&"a".repeat(201)).is_err());
    }
}
