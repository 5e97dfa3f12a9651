//! One directory per deploy attempt, `{workspace}/heads/{sha12}-{random}`: a cancelled attempt's
//! extraction (a blocking thread that outlives its task) can only write into its own, never into
//! the next attempt's checkout. The older ones are removed once a newer attempt's containers
//! replaced theirs (their bind mounts pointed there).

use std::path::{Path, PathBuf};

/// Under a preview's workspace: one directory per deploy attempt.
pub(crate) const HEADS: &str = "heads";

/// A new attempt's directory for `sha` (not created yet).
pub(crate) fn attempt_dir(workspace: &Path, sha: &str) -> PathBuf {
    workspace.join(HEADS).join(format!(
        "{}-{:016x}",
        sha.get(..12).unwrap_or(sha),
        fastrand::u64(..)
    ))
}

/// Removes every attempt directory under `heads` but `keep`; failures are logged, not fatal.
pub(crate) async fn remove_other_attempts(heads: &Path, keep: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(heads).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path != keep
            && let Err(e) = tokio::fs::remove_dir_all(&path).await
        {
            tracing::debug!(path = %path.display(), error = %e, "previews: an earlier attempt's checkout is still in use");
        }
    }
}

/// `text` with the checkout's absolute path made relative (`.`), and the workspace and the state
/// directory named by role: error text reaches pull request comments.
pub(crate) fn host_paths_hidden(text: &str, workspace: &Path, state_dir: &Path) -> String {
    let mut out = text.to_owned();
    // Every attempt's checkout (`{workspace}/heads/{attempt}/checkout`) is the checkout.
    for form in [Some(workspace.to_path_buf()), workspace.canonicalize().ok()]
        .into_iter()
        .flatten()
    {
        let prefix = format!("{}/{HEADS}/", form.display());
        while let Some(start) = out.find(&prefix) {
            let rest = &out[start + prefix.len()..];
            let Some(end) = rest.find("/checkout") else {
                break;
            };
            let after = start + prefix.len() + end + "/checkout".len();
            let nested = out[after..].starts_with('/');
            let replacement = if nested { "" } else { "." };
            out.replace_range(start..after + usize::from(nested), replacement);
        }
    }
    let checkout = workspace.join("checkout");
    let mut forms = vec![
        (checkout.clone(), "."),
        (workspace.to_path_buf(), "<workspace>"),
    ];
    forms.push((state_dir.to_path_buf(), "<state_dir>"));
    for (path, name) in forms {
        for form in [Some(path.clone()), path.canonicalize().ok()]
            .into_iter()
            .flatten()
        {
            let form = form.display().to_string();
            if form.len() > 1 {
                if name == "." {
                    out = out.replace(&format!("{form}/"), "");
                }
                out = out.replace(&form, name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_no_host_path() {
        let ws = Path::new("/var/lib/pb/previews/pb--acme--shop--1");
        let state = Path::new("/var/lib/pb");
        let text = "cannot read /var/lib/pb/previews/pb--acme--shop--1/heads/0123456789ab-00ff/checkout/app/Dockerfile; \
                    wrote /var/lib/pb/previews/pb--acme--shop--1/productbuilder.compose.yml; \
                    db at /var/lib/pb/db.sqlite; checkout /var/lib/pb/previews/pb--acme--shop--1/heads/0123456789ab-00ff/checkout";
        assert_eq!(
            host_paths_hidden(text, ws, state),
            "cannot read app/Dockerfile; wrote <workspace>/productbuilder.compose.yml; \
             db at <state_dir>/db.sqlite; checkout ."
        );
    }

    #[test]
    fn every_attempt_has_its_own_directory_named_by_its_commit() {
        let ws = Path::new("/w");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let (a, b) = (attempt_dir(ws, sha), attempt_dir(ws, sha));
        assert_ne!(a, b);
        for dir in [&a, &b] {
            assert_eq!(dir.parent(), Some(Path::new("/w/heads")));
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with("0123456789ab-"), "{name}");
            assert_eq!(name.len(), 12 + 1 + 16, "{name}");
        }
    }

    #[tokio::test]
    async fn older_attempts_are_removed_and_the_current_one_kept() {
        let ws = tempfile::tempdir().unwrap();
        let heads = ws.path().join(HEADS);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let (old, current) = (attempt_dir(ws.path(), sha), attempt_dir(ws.path(), sha));
        for dir in [&old, &current] {
            std::fs::create_dir_all(dir.join("checkout")).unwrap();
            std::fs::write(dir.join("checkout/file"), "x").unwrap();
        }
        remove_other_attempts(&heads, &current).await;
        assert!(!old.exists());
        assert!(current.join("checkout/file").is_file());
    }
}
