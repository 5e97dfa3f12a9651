//! The one comment per pull request that productbuilder owns, found by its marker among the
//! comments written by the daemon's own login (a marker in anyone else's comment is ignored and
//! never edited) and edited in place, with repeated edits coalesced: while an edit waits for the write budget, a newer body
//! replaces it, so a burst of status changes costs one write, and the latest body always wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::{GithubClient, GithubError};

#[derive(Debug, Deserialize)]
struct IssueComment {
    id: u64,
    body: Option<String>,
    user: Option<Author>,
}

#[derive(Debug, Deserialize)]
struct Author {
    login: String,
}

#[derive(Default)]
struct Slot {
    /// The newest body not yet written.
    latest: Option<String>,
    /// A task is writing this comment now; it will pick up `latest` when done.
    writing: bool,
    /// The comment's id, once found or created.
    id: Option<u64>,
}

/// Writes marker comments. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct MarkerComments {
    client: GithubClient,
    marker: String,
    slots: Arc<Mutex<HashMap<(String, u64), Slot>>>,
}

/// What [`MarkerComments::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// This call wrote (possibly a newer body handed over by later calls); the comment's id.
    Written(u64),
    /// A write already in progress will carry this body (or a newer one).
    Coalesced,
}

impl MarkerComments {
    /// `marker` is an HTML comment such as `<!-- productbuilder:preview -->`, invisible on GitHub.
    pub fn new(client: GithubClient, marker: impl Into<String>) -> Self {
        MarkerComments {
            client,
            marker: marker.into(),
            slots: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the marker comment of `repo#number` say `body` (the marker is added). Never creates
    /// a second comment: an existing one is found by its marker, even after the database is lost.
    pub async fn publish(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<Published, GithubError> {
        let key = (repo.to_owned(), number);
        let text = format!("{}\n{body}", self.marker);
        {
            let mut slots = self.lock();
            let slot = slots.entry(key.clone()).or_default();
            slot.latest = Some(text);
            if slot.writing {
                return Ok(Published::Coalesced);
            }
            slot.writing = true;
        }
        let result = self.write_until_current(&key).await;
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&key) {
            slot.writing = false;
        }
        result.map(Published::Written)
    }

    async fn write_until_current(&self, key: &(String, u64)) -> Result<u64, GithubError> {
        let (repo, number) = (key.0.as_str(), key.1);
        let identity = self.client.identity(repo).await?;
        loop {
            let (body, known_id) = {
                let mut slots = self.lock();
                let slot = slots.get_mut(key).expect("the slot exists while writing");
                match slot.latest.take() {
                    Some(body) => (body, slot.id),
                    None => return Ok(slot.id.expect("written at least once")),
                }
            };
            let id = match self
                .write_once(&identity, repo, number, known_id, &body)
                .await
            {
                Ok(id) => id,
                Err(e) => {
                    // Keep the body unless a newer one arrived: nothing is lost on failure.
                    if let Some(slot) = self.lock().get_mut(key) {
                        slot.latest.get_or_insert(body);
                    }
                    return Err(e);
                }
            };
            if let Some(slot) = self.lock().get_mut(key) {
                slot.id = Some(id);
            }
        }
    }

    async fn write_once(
        &self,
        identity: &crate::client::Identity,
        repo: &str,
        number: u64,
        known_id: Option<u64>,
        body: &str,
    ) -> Result<u64, GithubError> {
        let id = match known_id {
            Some(id) => Some(id),
            None => self.find(identity, repo, number).await?,
        };
        match id {
            Some(id) => {
                let url = self
                    .client
                    .url(&format!("/repos/{repo}/issues/comments/{id}"));
                let _: IssueComment = self
                    .client
                    .write(identity, Method::PATCH, &url, &json!({ "body": body }))
                    .await?;
                Ok(id)
            }
            None => {
                let url = self
                    .client
                    .url(&format!("/repos/{repo}/issues/{number}/comments"));
                let created: IssueComment = self
                    .client
                    .write(identity, Method::POST, &url, &json!({ "body": body }))
                    .await?;
                Ok(created.id)
            }
        }
    }

    /// The existing marker comment, if any (every page of the pull request's comments): the
    /// first one with the marker whose author is the daemon itself.
    async fn find(
        &self,
        identity: &crate::client::Identity,
        repo: &str,
        number: u64,
    ) -> Result<Option<u64>, GithubError> {
        let url = self.client.url(&format!(
            "/repos/{repo}/issues/{number}/comments?per_page=100"
        ));
        let own = self.client.own_login(repo).await?;
        let (comments, _) = self.client.poll_all::<IssueComment>(identity, &url).await?;
        Ok(comments
            .iter()
            .find(|c| {
                c.user
                    .as_ref()
                    .is_some_and(|u| u.login.eq_ignore_ascii_case(&own))
                    && c.body
                        .as_deref()
                        .is_some_and(|b| b.starts_with(&self.marker))
            })
            .map(|c| c.id))
    }
}
