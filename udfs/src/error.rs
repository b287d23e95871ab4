//! Errors of model training and use.

/// A `Result` whose error is a [`UdfError`].
pub type Result<T, E = UdfError> = std::result::Result<T, E>;

/// What can go wrong training or using a model.
#[derive(Debug, thiserror::Error)]
pub enum UdfError {
    /// An option is unknown, of the wrong type or out of range.
    #[error("{0}")]
    Option(String),
    /// The training input cannot train this model (missing target, text
    /// target for a regression, too few clients, no rows).
    #[error("{0}")]
    Input(String),
    /// A model or model version that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A pretrained model's files are missing or malformed (the message
    /// names the file).
    #[error("{0}")]
    Files(String),
    /// Training failed while running.
    #[error("training failed: {0}")]
    Training(String),
}
