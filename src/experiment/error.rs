//! The error of `dmutex cluster`'s runner and reports: one enum, each message complete for the user.

use crate::algo::Algorithm;
use crate::api::client::ClientError;
use crate::experiment::charts::ChartError;
use std::path::PathBuf;

/// Why `dmutex cluster` could not bring an experiment to its verdict (a verdict that fails is a result, not
/// an error). Each message is complete: it names the node, file or request and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The arguments describe no cluster this machine can run.
    #[error("{0}")]
    InvalidArgs(String),
    /// A file or directory of the run could not be created, written or read.
    #[error("{context}: {error}")]
    Io {
        /// What was being done, and to which path.
        context: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A chart could not be drawn or written.
    #[error(transparent)]
    Chart(#[from] ChartError),
    /// `results.json` could not be encoded.
    #[error("encoding results.json: {0}")]
    Encode(#[from] serde_json::Error),
    /// A node's endpoint could not be made into a client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A node process could not be started, exited early, or is not configured for the experiment.
    #[error("{0}")]
    Node(String),
    /// A node's HTTP API did not answer a request the experiment needs.
    #[error("node {node}: {request}: {error}")]
    Api {
        /// The node that did not answer.
        node: usize,
        /// The request, e.g. `GET /v1/stats`.
        request: &'static str,
        /// What went wrong.
        error: ClientError,
    },
    /// Not every node became ready in time; the message names them and what to check.
    #[error("{0}")]
    NotReady(String),
    /// The workload made no progress for too long.
    #[error("no progress for {secs} s; unfinished: {unfinished}")]
    Stalled {
        /// How long nothing happened.
        secs: u64,
        /// The nodes that had not finished, with their progress and logs.
        unfinished: String,
    },
    /// The shared counter file could not be read at the end.
    #[error("{0}")]
    Counter(String),
    /// Ctrl-C stopped the experiment (this also ends a sweep, unlike other failures).
    #[error("interrupted")]
    Interrupted,
    /// One experiment failed; the message says where its logs are.
    #[error("{algorithm} experiment failed; logs in {}: {error}", dir.display())]
    Experiment {
        /// The experiment's algorithm.
        algorithm: Algorithm,
        /// Its directory (node logs, counter file), kept.
        dir: PathBuf,
        /// Why it failed.
        error: Box<ExperimentError>,
    },
}

impl ExperimentError {
    /// An [`ExperimentError::Io`] maker for `map_err`: `context` says what was done to which path.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExperimentError {
        let context = context.into();
        move |error| ExperimentError::Io { context, error }
    }

    /// Whether Ctrl-C caused this.
    pub(crate) fn is_interrupted(&self) -> bool {
        match self {
            ExperimentError::Interrupted => true,
            ExperimentError::Experiment { error, .. } => error.is_interrupted(),
            _ => false,
        }
    }
}
