//! The crate's error type: core errors plus what an experiment adds (files, plots, options).

use simbal_core::SimbalError;
use std::fmt;

/// Everything that can go wrong in an experiment.
#[derive(Debug)]
pub enum ReproError {
    /// An error from simbal-core (shapes, configuration, non-finite values).
    Core(SimbalError),
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An option or combination of options makes no sense.
    Config(String),
    /// Drawing a plot failed.
    Plot(String),
    /// Serialising results failed.
    Json(String),
    /// Training produced a non-finite loss.
    Diverged {
        /// Which run.
        run: String,
        /// At which step.
        step: usize,
    },
}

impl fmt::Display for ReproError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Core(e) => write!(f, "simbal-core: {e}"),
            Self::Io { path, source } => write!(f, "{path}: {source}"),
            Self::Config(m) => write!(f, "invalid configuration: {m}"),
            Self::Plot(m) => write!(f, "plotting failed: {m}"),
            Self::Json(m) => write!(f, "writing JSON failed: {m}"),
            Self::Diverged { run, step } => write!(f, "run {run} diverged at step {step}"),
        }
    }
}

impl std::error::Error for ReproError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<SimbalError> for ReproError {
    fn from(e: SimbalError) -> Self {
        Self::Core(e)
    }
}

/// Result with [`ReproError`].
pub type Result<T> = std::result::Result<T, ReproError>;

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ReproError + '_ {
    move |source| ReproError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The first zero among named sizes, as a [`ReproError::Config`] (`prefix` names their owner).
pub(crate) fn check_sizes(prefix: &str, sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((what, _)) => Err(ReproError::Config(format!("{prefix}{what} must be >= 1"))),
        None => Ok(()),
    }
}
