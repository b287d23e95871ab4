//! A Postgres database's schemas and tables as a DataFusion catalog.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion_federation::sql::{RemoteTable, SQLFederationProvider, SQLTableSource};
use datafusion_federation::FederatedTableProviderAdaptor;
use tokio_postgres::types::Type;

use super::executor::PostgresExecutor;
use super::types::arrow_type;
use crate::error::ConnectorError;

/// One column as the remote catalog describes it.
#[derive(Debug, Clone)]
pub struct RemoteColumn {
    pub name: String,
    /// `None` when fedsql has no mapping for the type.
    pub data_type: Option<DataType>,
    pub type_name: String,
    pub nullable: bool,
}

/// One table (or view) of the remote catalog.
#[derive(Debug, Clone)]
pub struct RemoteTableInfo {
    pub schema: String,
    pub name: String,
    pub columns: Vec<RemoteColumn>,
}

impl RemoteTableInfo {
    /// The Arrow schema, or an error naming the first column fedsql cannot map.
    pub fn arrow_schema(&self) -> Result<SchemaRef, ConnectorError> {
        let fields = self
            .columns
            .iter()
            .map(|c| match &c.data_type {
                Some(t) => Ok(Field::new(&c.name, t.clone(), c.nullable)),
                None => Err(ConnectorError::UnsupportedType {
                    source_name: format!("{}.{}", self.schema, self.name),
                    column: c.name.clone(),
                    type_name: c.type_name.clone(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// Reads every user table's columns in one catalog query.
pub(crate) async fn discover_tables(
    executor: &PostgresExecutor,
) -> Result<Vec<RemoteTableInfo>, ConnectorError> {
    let client = executor.connect().await?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, a.atttypid, a.atttypmod, \
                    a.attnotnull, t.typtype::text, t.typbasetype, format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND has_schema_privilege(n.oid, 'USAGE') \
             ORDER BY 1, 2, a.attnum",
            &[],
        )
        .await
        .map_err(|e| executor.classify(e))?;
    let mut tables: Vec<RemoteTableInfo> = Vec::new();
    for row in rows {
        let schema: String = row.get(0);
        let table: String = row.get(1);
        let typmod: i32 = row.get(4);
        let typtype: String = row.get(6);
        let base: u32 = row.get(7);
        let oid: u32 = row.get(3);
        let data_type = match typtype.as_str() {
            "e" => Some(DataType::Utf8),
            "d" => Type::from_oid(base)
                .and_then(|t| arrow_type(&t, typmod))
                .map(|t| t.0),
            _ => Type::from_oid(oid)
                .and_then(|t| arrow_type(&t, typmod))
                .map(|t| t.0),
        };
        let column = RemoteColumn {
            name: row.get(2),
            data_type,
            type_name: row.get(8),
            nullable: !row.get::<_, bool>(5),
        };
        match tables.last_mut() {
            Some(t) if t.schema == schema && t.name == table => t.columns.push(column),
            _ => tables.push(RemoteTableInfo {
                schema,
                name: table,
                columns: vec![column],
            }),
        }
    }
    Ok(tables)
}

/// For each table with an integer primary key, its first key column (scans
/// split on it into ranges the index serves) and the source's row estimate.
async fn discover_split_keys(
    executor: &PostgresExecutor,
) -> Result<std::collections::HashMap<String, (String, f64)>, ConnectorError> {
    let client = executor.connect().await?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, c.reltuples::float8 \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
             WHERE i.indisprimary AND a.atttypid IN (20, 21, 23)",
            &[],
        )
        .await
        .map_err(|e| executor.classify(e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
                (r.get::<_, String>(2), r.get::<_, f64>(3)),
            )
        })
        .collect())
}

/// A Postgres database as a catalog: `<source>.<schema>.<table>`.
#[derive(Debug)]
pub struct PostgresCatalog {
    schemas: BTreeMap<String, Arc<PostgresSchema>>,
    /// Schemas fedsql adds itself: `pg_catalog` when a client connects with
    /// the source as its database.
    local: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl PostgresCatalog {
    /// Discovers the source's tables now; queries then plan without a round trip.
    pub async fn discover(executor: Arc<PostgresExecutor>) -> Result<Self, ConnectorError> {
        let tables = discover_tables(&executor).await?;
        executor.set_split_keys(discover_split_keys(&executor).await?);
        let provider = Arc::new(SQLFederationProvider::new(executor));
        let mut schemas: BTreeMap<String, BTreeMap<String, RemoteTableInfo>> = BTreeMap::new();
        for table in tables {
            schemas
                .entry(table.schema.clone())
                .or_default()
                .insert(table.name.clone(), table);
        }
        Ok(PostgresCatalog {
            local: RwLock::new(BTreeMap::new()),
            schemas: schemas
                .into_iter()
                .map(|(name, tables)| {
                    let schema = PostgresSchema {
                        provider: Arc::clone(&provider),
                        tables,
                    };
                    (name, Arc::new(schema))
                })
                .collect(),
        })
    }
}

impl CatalogProvider for PostgresCatalog {
    fn schema_names(&self) -> Vec<String> {
        let local = self.local.read().unwrap_or_else(|p| p.into_inner());
        self.schemas.keys().chain(local.keys()).cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(remote) = self.schemas.get(name) {
            return Some(Arc::clone(remote) as Arc<dyn SchemaProvider>);
        }
        let local = self.local.read().unwrap_or_else(|p| p.into_inner());
        local.get(name).cloned()
    }

    /// Only for schemas the source does not have (fedsql's `pg_catalog`).
    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        if self.schemas.contains_key(name) {
            return Err(DataFusionError::NotImplemented(format!(
                "schema {name} belongs to the Postgres source; it cannot be replaced"
            )));
        }
        let mut local = self.local.write().unwrap_or_else(|p| p.into_inner());
        Ok(local.insert(name.to_string(), schema))
    }
}

/// One remote schema; its tables are federated table providers.
#[derive(Debug)]
pub struct PostgresSchema {
    provider: Arc<SQLFederationProvider>,
    tables: BTreeMap<String, RemoteTableInfo>,
}

#[async_trait]
impl SchemaProvider for PostgresSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(info) = self.tables.get(name) else {
            return Ok(None);
        };
        let schema = info
            .arrow_schema()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // Tables in `public` are named bare in the SQL sent (Postgres finds
        // them through its default search_path). datafusion-federation
        // renames expressions when the remote name differs from the local
        // one, and loses aggregate names in the process
        // (`sum(public.t.x)` vs `sum(t.x)`), so the common case avoids it.
        let reference = if info.schema == "public" {
            TableReference::bare(info.name.as_str())
        } else {
            TableReference::partial(info.schema.as_str(), info.name.as_str())
        };
        let remote = RemoteTable::new(reference.into(), schema);
        let source = SQLTableSource::new_with_table(Arc::clone(&self.provider), Arc::new(remote));
        Ok(Some(Arc::new(FederatedTableProviderAdaptor::new(
            Arc::new(source),
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}
