//! What the operator's interfaces (the admin API, signal handlers) may ask of the running gateway:
//! a reload, and its outcome. A leaf, so `admin` and `cli` can hold a [`Reloader`] without
//! depending on `runtime`, which owns the task that answers.

use tokio::sync::{mpsc, oneshot};

use crate::config::diff::ConfigChanges;

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new generation is serving new connections; `changes` says what differs from the last.
    Applied {
        version: String,
        changes: Box<ConfigChanges>,
    },
    /// Nothing changed; each line is one problem with its place.
    Rejected { problems: Vec<String> },
}

impl ReloadOutcome {
    pub fn rejected(reason: &str) -> Self {
        Self::Rejected {
            problems: vec![reason.to_owned()],
        }
    }
}

/// One reload request: where its outcome goes.
pub(crate) type ReloadRequest = oneshot::Sender<ReloadOutcome>;

/// Asks the reload task for a reload. Cheap to clone; handed to the admin API and signal handlers.
#[derive(Debug, Clone)]
pub struct Reloader {
    tx: mpsc::Sender<ReloadRequest>,
}

impl Reloader {
    /// A handle and the receiving end the reload task serves.
    pub fn channel() -> (Self, mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = mpsc::channel(16);
        (Self { tx }, rx)
    }

    /// Requests a reload and waits for its outcome.
    pub async fn reload(&self) -> ReloadOutcome {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).await.is_err() {
            return ReloadOutcome::rejected("the gateway is shutting down");
        }
        rx.await
            .unwrap_or_else(|_| ReloadOutcome::rejected("the gateway is shutting down"))
    }
}
