//! The differential fuzzer: random valid queries over TPC-H ([`generate`]),
//! each run on PostgreSQL (the reference) and on fedsql with pushdown on and
//! off; any difference, error where PostgreSQL answers, or crash is a
//! failure, minimised ([`Fuzzer::minimise`]) and written out as a `.slt`
//! regression case ([`regression_slt`]).

pub mod generate;
pub mod sql;

use std::collections::BTreeSet;
use std::time::Duration;

use sql::Sql;

/// How long one engine may take over one query before it counts as hung.
const QUERY_LIMIT: Duration = Duration::from_secs(120);

/// What running one query everywhere showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// PostgreSQL rejected it: not a test of anything.
    Invalid(String),
    /// Every engine gave PostgreSQL's answer; `rows` of them.
    Same { rows: usize },
    /// fedsql differs from PostgreSQL.
    Failure(Failure),
}

/// How fedsql differed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `pushdown on` or `pushdown off`.
    pub mode: &'static str,
    pub kind: FailureKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Another answer than PostgreSQL's.
    Difference,
    /// An error where PostgreSQL answered.
    Error,
    /// The server went away.
    Crash,
    /// No answer within [`QUERY_LIMIT`].
    Hang,
}

/// One engine's rows, each value as text (`None`: NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Where generated queries name a table (`@@.lineitem`): each engine puts
/// its own qualifier there.
pub const TABLE_MARKER: &str = "@@.";

/// The three connections a query is run on.
pub struct Fuzzer<'a> {
    /// PostgreSQL, with the TPC-H tables in its search path.
    pub reference: &'a tokio_postgres::Client,
    pub pushdown_on: &'a tokio_postgres::Client,
    pub pushdown_off: &'a tokio_postgres::Client,
    /// What fedsql's queries name the tables with (`wh.tpch.`), or `""`.
    pub fedsql_tables: &'a str,
}

impl Fuzzer<'_> {
    /// `sql` as sent to fedsql.
    pub fn for_fedsql(&self, sql: &str) -> String {
        sql.replace(TABLE_MARKER, self.fedsql_tables)
    }

    /// `sql` as sent to PostgreSQL.
    pub fn for_reference(&self, sql: &str) -> String {
        sql.replace(TABLE_MARKER, "")
    }

    /// Runs `sql` everywhere and compares.
    pub async fn check(&self, sql: &str) -> Outcome {
        let reference_sql = self.for_reference(sql);
        let sql = &self.for_fedsql(sql);
        let want = match run(self.reference, &reference_sql).await {
            Ok(rows) => rows,
            Err(e) => return Outcome::Invalid(e.1),
        };
        for (mode, client) in [
            ("pushdown on", self.pushdown_on),
            ("pushdown off", self.pushdown_off),
        ] {
            match run(client, sql).await {
                Ok(got) => {
                    if let Some(detail) = difference(&want, &got) {
                        return Outcome::Failure(Failure {
                            mode,
                            kind: FailureKind::Difference,
                            detail,
                        });
                    }
                }
                Err((kind, detail)) => {
                    return Outcome::Failure(Failure { mode, kind, detail });
                }
            }
        }
        Outcome::Same { rows: want.len() }
    }

    /// The smallest query (by cutting `query`'s choices) that still fails
    /// the way `failure` does; at most `budget` tries.
    pub async fn minimise(&self, query: &Sql, failure: &Failure, budget: usize) -> String {
        let mut cuts = BTreeSet::new();
        let mut best = query.render(&cuts);
        let mut tries = 0;
        let mut improved = true;
        while improved && tries < budget {
            improved = false;
            for id in 0..query.choices() {
                if cuts.contains(&id) || tries >= budget {
                    continue;
                }
                let mut candidate = cuts.clone();
                candidate.insert(id);
                let sql = query.render(&candidate);
                if sql == best || sql.len() >= best.len() {
                    continue;
                }
                tries += 1;
                if let Outcome::Failure(f) = self.check(&sql).await {
                    if f.kind == failure.kind && f.mode == failure.mode {
                        cuts = candidate;
                        best = sql;
                        improved = true;
                    }
                }
            }
        }
        best
    }
}

/// Runs `sql` (simple protocol: every value as text), with a time limit.
pub async fn run(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Rows, (FailureKind, String)> {
    match tokio::time::timeout(QUERY_LIMIT, crate::try_text_rows(client, sql)).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) if client.is_closed() => Err((FailureKind::Crash, e)),
        Ok(Err(e)) => Err((FailureKind::Error, e)),
        Err(_) => {
            // The statement still runs on the server and the connection
            // answers in order: without a cancel every later query on it
            // would wait for this one too.
            let cancelled = client
                .cancel_token()
                .cancel_query(tokio_postgres::NoTls)
                .await;
            Err((
                FailureKind::Hang,
                format!("no answer within {QUERY_LIMIT:?} (cancel: {cancelled:?})"),
            ))
        }
    }
}

/// A value as compared: numbers to 4 decimals (PostgreSQL's numeric and
/// fedsql's decimal/float averages differ in the last digits), text
/// without trailing blanks (`char(n)` padding).
pub fn normalise(value: &Option<String>) -> String {
    let Some(v) = value else {
        return "NULL".to_string();
    };
    let v = v.trim_end();
    let numeric = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && v.chars().any(|c| c.is_ascii_digit());
    match v.parse::<f64>() {
        Ok(x) if numeric => {
            let rounded = format!("{x:.4}");
            if rounded == "-0.0000" {
                "0.0000".to_string()
            } else {
                rounded
            }
        }
        _ => v.to_string(),
    }
}

fn sorted(rows: &Rows) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(normalise).collect())
        .collect();
    out.sort();
    out
}

/// Why `got` is not `want` as a multiset of rows, if it is not.
pub fn difference(want: &Rows, got: &Rows) -> Option<String> {
    let (want, got) = (sorted(want), sorted(got));
    if want.len() != got.len() {
        return Some(format!(
            "{} rows where PostgreSQL has {}; first rows {:?} vs {:?}",
            got.len(),
            want.len(),
            got.iter().take(3).collect::<Vec<_>>(),
            want.iter().take(3).collect::<Vec<_>>()
        ));
    }
    want.iter()
        .zip(&got)
        .find(|(w, g)| w != g)
        .map(|(w, g)| format!("row {g:?} where PostgreSQL has {w:?}"))
}

/// A `.slt` regression case for `sql`: PostgreSQL's answer `want`, checked
/// with pushdown on and then off (run with
/// [`crate::slt::run_file_tolerant`]). Answers of more than 100 rows are
/// checked by their count, to keep the file readable.
pub fn regression_slt(comment: &str, sql: &str, want: &Rows) -> String {
    let (sql, want) = if want.len() > 100 {
        (
            format!("SELECT count(*) FROM ({sql}) AS fuzz_case"),
            vec![vec![Some(want.len().to_string())]],
        )
    } else {
        (sql.to_string(), want.clone())
    };
    let mut expected = String::new();
    for row in sorted(&want) {
        let line: Vec<String> = row
            .into_iter()
            .map(|v| if v.is_empty() { "(empty)".into() } else { v })
            .collect();
        expected.push_str(&line.join(" "));
        expected.push('\n');
    }
    let columns = "T".repeat(want.first().map_or(1, Vec::len));
    let mut out = String::new();
    for line in comment.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    for setting in ["on", "off"] {
        out.push_str(&format!(
            "\nstatement ok\nSET fedsql.pushdown = {setting}\n\nquery {columns} rowsort\n{sql}\n----\n{expected}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_to_four_decimals_and_text_exactly() {
        let v = |s: &str| Some(s.to_string());
        assert_eq!(normalise(&v("12.50")), normalise(&v("12.5")));
        assert_eq!(normalise(&v("2.333333333333333333")), "2.3333");
        assert_ne!(normalise(&v("12.5")), normalise(&v("12.6")));
        assert_eq!(normalise(&v("AIR   ")), "AIR");
        assert_eq!(normalise(&v("1995-01-02")), "1995-01-02");
        assert_eq!(normalise(&None), "NULL");
        let want = vec![vec![v("1"), None], vec![v("2"), v("x")]];
        let same = vec![vec![v("2"), v("x")], vec![v("1.0"), None]];
        assert_eq!(difference(&want, &same), None);
        let other = vec![vec![v("2"), v("x")], vec![v("1"), v("y")]];
        assert!(difference(&want, &other).is_some());
        assert!(difference(&want, &want[..1].to_vec()).is_some());
    }
}
