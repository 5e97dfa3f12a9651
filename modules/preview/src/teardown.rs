//! Removal: a preview's containers, networks, volumes, images and workspace, then its row marked
//! deleted. Idempotent (`down` of what is gone is fine), so a removal cut short by a crash or a
//! failure is simply done again by the next pass; the row says deleted only once it finished.

use crate::db::{DeletedReason, Details};
use crate::engine::EngineError;
use crate::reconcile::Previews;
use crate::runner::{CommandError, Project};
use crate::state::Event;

/// Why a teardown did not finish (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine or Compose could not be reached at all.
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot remove the workspace {path}: {source}; check its permissions")]
    Workspace {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Previews {
    /// Removes the preview's containers, networks, volumes, images and workspace, then marks it
    /// deleted. Failures leave the row live, so the next pass tries again.
    pub(crate) async fn remove(&self, repo: &str, number: u64, reason: DeletedReason) {
        let Ok(Some(row)) = self.get(repo, number).await else {
            return;
        };
        if let Err(e) = self.teardown(&row.project).await {
            tracing::warn!(repo, number, error = %e, "previews: removal failed; retrying on the next pass");
            return;
        }
        if row.is_live() {
            self.record(
                repo,
                number,
                &row.head_sha,
                Event::Delete,
                Details {
                    deleted_reason: Some(reason),
                    ..Details::default()
                },
            )
            .await;
        }
        tracing::info!(repo, number, reason = reason.as_str(), "previews: removed");
        self.report(repo, number);
    }

    /// `down` for a project: with its compose file when the workspace still has it, else (a lost
    /// workspace, an orphan, a file whose paths are gone) through the engine by Compose's project
    /// label; then the images built for it and the workspace.
    pub(crate) async fn teardown(&self, project: &str) -> Result<(), TeardownError> {
        let engine = self
            .engine()
            .await
            .map_err(|e| TeardownError::Unavailable(e.to_string()))?
            .clone();
        let workspace = self.workspace(project);
        let file = workspace.join("productbuilder.compose.yml");
        // The router is attached to the preview's networks; `down` cannot remove them until it
        // leaves.
        engine.detach_foreign(project).await?;
        let down: Result<(), Option<CommandError>> = if file.is_file() {
            let cli = self
                .compose()
                .await
                .map_err(|e| TeardownError::Unavailable(e.to_string()))?;
            let p = Project {
                name: project.to_owned(),
                file,
                dir: workspace.clone(),
                env: Vec::new(),
            };
            cli.down(&p).await.map_err(Some)
        } else {
            Err(None)
        };
        match down {
            // `down --rmi local` removed the images tagged now; earlier heads' are found by label.
            Ok(()) => engine.remove_images(project, false).await?,
            Err(why) => {
                let why = why.map_or_else(
                    || "no compose file in the workspace".to_owned(),
                    |e| e.to_string(),
                );
                tracing::debug!(project, why, "removing through the engine");
                engine.remove_project(project).await?;
            }
        }
        match tokio::fs::remove_dir_all(&workspace).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TeardownError::Workspace {
                path: workspace,
                source,
            }),
        }
    }
}
