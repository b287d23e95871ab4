//! What a source reports about its tables' sizes, for decisions that only
//! pay on some data (see `pushdown::partial_aggregate`).
//!
//! Statistics are read from the source's own catalog when its tables are
//! discovered (`CREATE SOURCE`, start-up, `REFRESH SOURCE`): Postgres'
//! `pg_class.reltuples` and `pg_stats.n_distinct` (filled by `ANALYZE`),
//! MariaDB's `information_schema` row and index-cardinality estimates plus
//! its engine-independent statistics when readable. fedsql never runs
//! `ANALYZE` on a source itself; what is unknown stays unknown, and a
//! decision that needs it is not taken.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::logical_expr::LogicalPlan;
use datafusion_federation::get_table_source;
use datafusion_federation::sql::{RemoteTable, SQLTable, SQLTableSource};

use crate::remote_catalog::RemoteTableInfo;

/// Row count and per-column distinct counts, all estimates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableStatistics {
    /// Rows in the table; `None` when the source has no estimate.
    pub rows: Option<f64>,
    /// Distinct values per column name, for the columns the source knows.
    pub distinct: HashMap<String, f64>,
}

impl TableStatistics {
    /// Records a column's distinct count in the encoding Postgres'
    /// `n_distinct` uses: negative values are a fraction of the rows.
    pub fn set_distinct(&mut self, column: &str, n_distinct: f64) {
        let count = if n_distinct < 0.0 {
            match self.rows {
                Some(rows) => -n_distinct * rows,
                None => return,
            }
        } else {
            n_distinct
        };
        if count > 0.0 {
            self.distinct.insert(column.to_string(), count);
        }
    }
}

/// Postgres' statistics of every table, one row per (table, analyzed
/// column): schema, table, `reltuples` (negative: never analyzed) and the
/// column's `n_distinct`. Sent over tokio-postgres and over psqlODBC alike.
pub const POSTGRES_STATISTICS_SQL: &str = "\
SELECT n.nspname::text, c.relname::text, c.reltuples::float8, s.attname::text, s.n_distinct::float8 \
FROM pg_catalog.pg_class c \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
LEFT JOIN pg_catalog.pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname \
     AND NOT s.inherited \
WHERE c.relkind IN ('r', 'm', 'p', 'f') \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// MySQL/MariaDB estimates for the connection's database: rows, and the
/// cardinality of each index's first column (the only per-column count
/// MySQL keeps without engine-independent statistics).
pub const MYSQL_STATISTICS_SQL: &str = "\
SELECT t.TABLE_NAME, t.TABLE_ROWS, s.COLUMN_NAME, s.CARDINALITY \
FROM information_schema.TABLES t \
LEFT JOIN information_schema.STATISTICS s ON s.TABLE_SCHEMA = t.TABLE_SCHEMA \
     AND s.TABLE_NAME = t.TABLE_NAME AND s.SEQ_IN_INDEX = 1 \
WHERE t.TABLE_SCHEMA = DATABASE()";

/// MariaDB's engine-independent statistics (`ANALYZE TABLE … PERSISTENT FOR
/// ALL`), as Postgres-style fractions of the rows; readable only with
/// access to the `mysql` schema.
pub const MARIADB_COLUMN_STATISTICS_SQL: &str = "\
SELECT table_name, NULL, column_name, -1 / avg_frequency \
FROM mysql.column_stats WHERE db_name = DATABASE() AND avg_frequency > 0";

/// One row of a statistics query: a table's row estimate and, optionally,
/// one column's distinct count (in `n_distinct`'s encoding).
#[derive(Debug, Clone, Default)]
pub struct StatisticsRow {
    /// `None` matches the table in any schema (MySQL: one database).
    pub schema: Option<String>,
    pub table: String,
    pub rows: Option<f64>,
    pub column: Option<String>,
    pub n_distinct: Option<f64>,
}

/// Adds `rows` to the statistics of the matching `tables`.
pub fn apply(tables: &mut [RemoteTableInfo], rows: impl IntoIterator<Item = StatisticsRow>) {
    // One row per (table, column): look tables up by name, not by scanning.
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, t) in tables.iter().enumerate() {
        by_name.entry(t.name.clone()).or_default().push(i);
    }
    for row in rows {
        let Some(candidates) = by_name.get(&row.table) else {
            continue;
        };
        for &i in candidates {
            let table = &mut tables[i];
            if row.schema.as_ref().is_some_and(|s| *s != table.schema) {
                continue;
            }
            let statistics = &mut table.statistics;
            if let Some(rows) = row.rows.filter(|r| *r >= 0.0) {
                statistics.rows = Some(rows);
            }
            if let (Some(column), Some(n)) = (&row.column, row.n_distinct) {
                statistics.set_distinct(column, n);
            }
        }
    }
}

/// A source's table, as datafusion-federation sends it, with its statistics.
#[derive(Debug)]
pub struct SourceTable {
    remote: RemoteTable,
    statistics: Arc<TableStatistics>,
}

impl SourceTable {
    pub fn new(reference: TableReference, schema: SchemaRef, statistics: TableStatistics) -> Self {
        SourceTable {
            remote: RemoteTable::new(reference.into(), schema),
            statistics: Arc::new(statistics),
        }
    }
}

impl SQLTable for SourceTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_reference(&self) -> TableReference {
        self.remote.table_reference().clone()
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(self.remote.schema())
    }
}

/// The statistics of the table `scan` reads, if it is a source's table.
pub fn scan_statistics(scan: &LogicalPlan) -> Option<Arc<TableStatistics>> {
    let LogicalPlan::TableScan(scan) = scan else {
        return None;
    };
    let source = get_table_source(&scan.source).ok()??;
    let sql = (source.as_ref() as &dyn Any).downcast_ref::<SQLTableSource>()?;
    let table = sql.table.as_any().downcast_ref::<SourceTable>()?;
    Some(Arc::clone(&table.statistics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_n_distinct_is_a_fraction_of_the_rows() {
        let mut s = TableStatistics {
            rows: Some(1000.0),
            ..Default::default()
        };
        s.set_distinct("a", -0.5);
        s.set_distinct("b", 25.0);
        s.set_distinct("c", 0.0);
        assert_eq!(s.distinct.get("a"), Some(&500.0));
        assert_eq!(s.distinct.get("b"), Some(&25.0));
        assert_eq!(s.distinct.get("c"), None, "0 means unknown in pg_stats");
        let mut unknown_rows = TableStatistics::default();
        unknown_rows.set_distinct("a", -0.5);
        assert!(unknown_rows.distinct.is_empty());
    }
}
