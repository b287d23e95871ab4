//! The one mapping from fedsql errors to gRPC status codes.
//!
//! Messages are exactly those the Postgres wire sends; the SQLSTATE and the
//! position travel as response metadata (`x-fedsql-sqlstate`,
//! `x-fedsql-position`) for clients that want them.

use tonic::{Code, Status};

use crate::error::ServerError;

/// The gRPC code for a SQLSTATE.
pub fn code_for(sqlstate: &str) -> Code {
    match sqlstate {
        "42P01" | "42703" | "42704" | "3D000" | "42883" => Code::NotFound,
        "42710" | "42P07" | "42P06" | "42723" => Code::AlreadyExists,
        "57014" => Code::Cancelled,
        "0A000" => Code::Unimplemented,
        "53200" | "53100" => Code::ResourceExhausted,
        "34000" => Code::NotFound,
        s if s.starts_with("08") => Code::Unavailable,
        s if s.starts_with("28") => Code::Unauthenticated,
        s if s.starts_with("42") || s.starts_with("22") => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// A status carrying the error's message, SQLSTATE and position.
pub fn to_status(e: &ServerError) -> Status {
    let mut status = Status::new(code_for(e.sqlstate()), e.to_string());
    let metadata = status.metadata_mut();
    if let Ok(v) = e.sqlstate().parse() {
        metadata.insert("x-fedsql-sqlstate", v);
    }
    if let Some(Ok(v)) = e.position().map(|p| p.to_string().parse()) {
        metadata.insert("x-fedsql-position", v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_sqlstate_classes() {
        assert_eq!(code_for("42601"), Code::InvalidArgument);
        assert_eq!(code_for("42P01"), Code::NotFound);
        assert_eq!(code_for("08001"), Code::Unavailable);
        assert_eq!(code_for("08006"), Code::Unavailable);
        assert_eq!(code_for("57014"), Code::Cancelled);
        assert_eq!(code_for("28P01"), Code::Unauthenticated);
        assert_eq!(code_for("XX000"), Code::Internal);
        let e = ServerError::Syntax {
            message: "bad".into(),
            position: Some(8),
        };
        let s = to_status(&e);
        assert_eq!(s.message(), "syntax error: bad");
        assert_eq!(s.metadata().get("x-fedsql-position").unwrap(), "8");
        assert_eq!(s.metadata().get("x-fedsql-sqlstate").unwrap(), "42601");
    }
}
