//! fedsql's SQL dialect extensions.
//!
//! fedsql speaks DataFusion's SQL plus a handful of statements of its own
//! (sources, training and model management). [`parse`] is the single front
//! every wire and the CLI go through: it returns fedsql statements as typed
//! ASTs and every other statement as its original text for DataFusion.
#![warn(rust_2018_idioms)]

pub mod ast;
pub mod complexity;
pub mod connection;
pub mod error;
pub mod parser;

pub use ast::*;
pub use connection::ConnectionStatement;
pub use error::{locate, ParseError, ParseErrorKind};
pub use parser::{parse, Statement};
