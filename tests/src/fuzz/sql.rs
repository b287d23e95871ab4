//! Generated SQL as a tree the minimiser can cut.
//!
//! A query is built from [`Sql`] pieces; some are marked as droppable
//! ([`Sql::opt`]) or replaceable by something simpler ([`Sql::alt`]). Each
//! such choice has a fixed number in pre-order, so a set of cut numbers
//! renders one smaller query, and the minimiser searches over those sets.
//! A cut may make the query invalid; the minimiser then simply keeps looking
//! (PostgreSQL rejects it, so it is not a failure any more).

use std::collections::BTreeSet;

/// A piece of generated SQL.
#[derive(Debug, Clone)]
pub enum Sql {
    Text(String),
    Seq(Vec<Sql>),
    /// Dropped when cut.
    Opt(Box<Sql>),
    /// The first, or the simpler second when cut.
    Alt(Box<Sql>, Box<Sql>),
}

impl From<&str> for Sql {
    fn from(text: &str) -> Self {
        Sql::Text(text.to_string())
    }
}

impl From<String> for Sql {
    fn from(text: String) -> Self {
        Sql::Text(text)
    }
}

impl Sql {
    /// The pieces one after the other.
    pub fn seq(parts: Vec<Sql>) -> Sql {
        Sql::Seq(parts)
    }

    /// A piece the minimiser may drop.
    pub fn opt(part: impl Into<Sql>) -> Sql {
        Sql::Opt(Box::new(part.into()))
    }

    /// `full`, which the minimiser may replace with `simpler`.
    pub fn alt(full: impl Into<Sql>, simpler: impl Into<Sql>) -> Sql {
        Sql::Alt(Box::new(full.into()), Box::new(simpler.into()))
    }

    /// How many choices (opt and alt pieces) this tree has.
    pub fn choices(&self) -> usize {
        match self {
            Sql::Text(_) => 0,
            Sql::Seq(parts) => parts.iter().map(Sql::choices).sum(),
            Sql::Opt(part) => 1 + part.choices(),
            Sql::Alt(full, simpler) => 1 + full.choices() + simpler.choices(),
        }
    }

    /// The SQL with the choices numbered in `cuts` cut.
    pub fn render(&self, cuts: &BTreeSet<usize>) -> String {
        let mut out = String::new();
        let mut next = 0;
        self.write(cuts, &mut next, &mut out);
        out
    }

    fn write(&self, cuts: &BTreeSet<usize>, next: &mut usize, out: &mut String) {
        match self {
            Sql::Text(text) => out.push_str(text),
            Sql::Seq(parts) => {
                for part in parts {
                    part.write(cuts, next, out);
                }
            }
            Sql::Opt(part) => {
                let id = *next;
                *next += 1;
                if cuts.contains(&id) {
                    *next += part.choices();
                } else {
                    part.write(cuts, next, out);
                }
            }
            Sql::Alt(full, simpler) => {
                let id = *next;
                *next += 1;
                if cuts.contains(&id) {
                    *next += full.choices();
                    simpler.write(cuts, next, out);
                } else {
                    full.write(cuts, next, out);
                    *next += simpler.choices();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_render_smaller_queries() {
        let q = Sql::seq(vec![
            "SELECT a".into(),
            Sql::opt(", b"),
            " FROM t WHERE ".into(),
            Sql::alt(Sql::seq(vec!["x > 1".into(), Sql::opt(" AND y")]), "TRUE"),
        ]);
        assert_eq!(q.choices(), 3);
        let none = BTreeSet::new();
        assert_eq!(q.render(&none), "SELECT a, b FROM t WHERE x > 1 AND y");
        assert_eq!(
            q.render(&BTreeSet::from([0])),
            "SELECT a FROM t WHERE x > 1 AND y"
        );
        assert_eq!(
            q.render(&BTreeSet::from([2])),
            "SELECT a, b FROM t WHERE x > 1"
        );
        assert_eq!(
            q.render(&BTreeSet::from([1])),
            "SELECT a, b FROM t WHERE TRUE"
        );
    }
}
