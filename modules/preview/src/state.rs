//! A preview's status, and the only function allowed to change it.
//!
//! `pending → building → deploying → ready`; any of them `→ failed` (with the stage and error);
//! a new head commit starts again from `pending`; a closed pull request ends in `deleted`. The
//! predecessor enforced its transition table only in tests; here [`transition`] is the table, and
//! an impossible transition is an error the reconciler must handle, not a silent overwrite.

use std::fmt;

/// The states of the public contract (and of the `previews.status` column).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    Pending,
    Building,
    Deploying,
    Ready,
    Failed,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Status> {
        s.parse().ok()
    }
}

/// The eight steps of a deploy, in order; a failure names one of them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Stage {
    Download,
    Config,
    Policy,
    Build,
    Start,
    Migrate,
    Health,
    PostDeploy,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Download,
        Stage::Config,
        Stage::Policy,
        Stage::Build,
        Stage::Start,
        Stage::Migrate,
        Stage::Health,
        Stage::PostDeploy,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Stage> {
        s.parse().ok()
    }

    /// `building` covers download to build (images are built here); `deploying` the rest.
    pub fn status(self) -> Status {
        if self <= Stage::Build {
            Status::Building
        } else {
            Status::Deploying
        }
    }
}

/// As the contract spells them (`GET /previews`).
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What happened to a preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A head commit to deploy: a new push, a reopened pull request, or a repair of a preview
    /// whose containers vanished.
    Deploy,
    /// A step began.
    Step(Stage),
    /// The last step passed.
    Ready,
    /// A step failed.
    Fail(Stage),
    /// The pull request closed, the preview expired or was evicted.
    Delete,
}

/// Where a preview is: its status and, while building or deploying or after a failure, the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub status: Status,
    pub stage: Option<Stage>,
}

impl Position {
    pub const NEW: Position = Position {
        status: Status::Pending,
        stage: None,
    };
}

/// An event that cannot happen in the current position: a bug in the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTransition {
    pub from: Position,
    pub event: Event,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a preview in {}{} cannot take {:?}",
            self.from.status,
            self.from
                .stage
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            self.event
        )
    }
}

impl std::error::Error for InvalidTransition {}

/// The transition table.
pub fn transition(from: Position, event: Event) -> Result<Position, InvalidTransition> {
    use Status::*;
    let invalid = Err(InvalidTransition { from, event });
    match (from.status, event) {
        // A new head restarts from pending, from anywhere (a deploy in flight is cancelled).
        (_, Event::Deploy) => Ok(Position::NEW),
        (_, Event::Delete) => Ok(Position {
            status: Deleted,
            stage: None,
        }),
        // Steps only move forward, and only while a deploy is under way.
        (Pending | Building | Deploying, Event::Step(stage)) => {
            if from.stage.is_some_and(|current| stage < current) {
                return invalid;
            }
            Ok(Position {
                status: stage.status(),
                stage: Some(stage),
            })
        }
        (Deploying, Event::Ready) if from.stage.is_some() => Ok(Position {
            status: Ready,
            stage: None,
        }),
        (Pending | Building | Deploying, Event::Fail(stage)) => Ok(Position {
            status: Failed,
            stage: Some(stage),
        }),
        _ => invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(status: Status, stage: Option<Stage>) -> Position {
        Position { status, stage }
    }

    #[test]
    fn the_happy_path_walks_every_stage() {
        let mut p = Position::NEW;
        for stage in Stage::ALL {
            p = transition(p, Event::Step(stage)).unwrap();
            assert_eq!(p.status, stage.status());
        }
        assert_eq!(p.status, Status::Deploying);
        p = transition(p, Event::Ready).unwrap();
        assert_eq!(p, at(Status::Ready, None));
    }

    #[test]
    fn the_table() {
        use Event as E;
        use Stage as S;
        use Status as St;
        let ok: &[(Position, Event, Position)] = &[
            (at(St::Ready, None), E::Deploy, Position::NEW),
            (at(St::Failed, Some(S::Health)), E::Deploy, Position::NEW),
            (at(St::Building, Some(S::Build)), E::Deploy, Position::NEW),
            (at(St::Deleted, None), E::Deploy, Position::NEW),
            (
                at(St::Building, Some(S::Download)),
                E::Fail(S::Download),
                at(St::Failed, Some(S::Download)),
            ),
            (
                at(St::Deploying, Some(S::Health)),
                E::Fail(S::Health),
                at(St::Failed, Some(S::Health)),
            ),
            (
                at(St::Pending, None),
                E::Fail(S::Download),
                at(St::Failed, Some(S::Download)),
            ),
            (at(St::Ready, None), E::Delete, at(St::Deleted, None)),
            (
                at(St::Building, Some(S::Build)),
                E::Delete,
                at(St::Deleted, None),
            ),
            (
                at(St::Building, Some(S::Build)),
                E::Step(S::Build),
                at(St::Building, Some(S::Build)),
            ),
            (
                at(St::Building, Some(S::Build)),
                E::Step(S::Start),
                at(St::Deploying, Some(S::Start)),
            ),
        ];
        for (from, event, want) in ok {
            assert_eq!(transition(*from, *event), Ok(*want), "{from:?} + {event:?}");
        }
        let refused: &[(Position, Event)] = &[
            (at(St::Ready, None), E::Step(S::Build)),
            (at(St::Ready, None), E::Fail(S::Health)),
            (at(St::Failed, Some(S::Build)), E::Ready),
            (at(St::Deleted, None), E::Step(S::Download)),
            (at(St::Pending, None), E::Ready),
            (at(St::Building, Some(S::Build)), E::Ready),
            (at(St::Deploying, Some(S::Health)), E::Step(S::Build)),
        ];
        for (from, event) in refused {
            let err = transition(*from, *event).unwrap_err();
            assert_eq!(err.from, *from);
            assert!(err.to_string().starts_with("a preview in "), "{err}");
        }
    }

    #[test]
    fn names_round_trip_and_match_the_contract() {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "download",
                "config",
                "policy",
                "build",
                "start",
                "migrate",
                "health",
                "post_deploy"
            ]
        );
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        let statuses: Vec<&str> = <Status as strum::VariantArray>::VARIANTS
            .iter()
            .map(|s| s.as_str())
            .collect();
        // As stored in `previews.status` (and checked by its CHECK constraint): never to change.
        assert_eq!(
            statuses,
            [
                "pending",
                "building",
                "deploying",
                "ready",
                "failed",
                "deleted"
            ]
        );
        for st in statuses {
            assert_eq!(Status::parse(st).unwrap().as_str(), st);
            assert_eq!(Status::parse(st).unwrap().to_string(), st);
        }
        assert_eq!(Status::parse("Ready"), None, "exact spelling only");
        assert_eq!(Stage::PostDeploy.to_string(), "post_deploy");
    }
}
