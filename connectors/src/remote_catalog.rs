//! A SQL source's schemas and tables as a DataFusion catalog.
//!
//! Shared by every connector that discovers a remote catalog (Postgres,
//! ODBC): each table is a datafusion-federation table, so whole same-source
//! sub-plans can be sent to the source as one query.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion_federation::sql::{SQLFederationProvider, SQLTableSource};
use datafusion_federation::FederatedTableProviderAdaptor;

use crate::error::ConnectorError;
use crate::statistics::{SourceTable, TableStatistics};

/// One column as the remote catalog describes it.
#[derive(Debug, Clone)]
pub struct RemoteColumn {
    pub name: String,
    /// `None` when fedsql has no mapping for the type.
    pub data_type: Option<DataType>,
    /// The source's own name for the type, for messages.
    pub type_name: String,
    pub nullable: bool,
}

/// One table (or view) of the remote catalog.
#[derive(Debug, Clone)]
pub struct RemoteTableInfo {
    pub schema: String,
    pub name: String,
    pub columns: Vec<RemoteColumn>,
    /// What the source reports about the table's size.
    pub statistics: TableStatistics,
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

/// `schema.table` for each table (datafusion-federation's `table_names`).
pub fn qualified_names(tables: Vec<RemoteTableInfo>) -> Vec<String> {
    tables
        .into_iter()
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect()
}

/// The schema of `table_name` (`schema.table` or a bare name) among
/// `tables` (datafusion-federation's `get_table_schema`).
pub fn schema_of(tables: Vec<RemoteTableInfo>, table_name: &str) -> DfResult<SchemaRef> {
    tables
        .into_iter()
        .find(|t| format!("{}.{}", t.schema, t.name) == table_name || t.name == table_name)
        .ok_or_else(|| DataFusionError::Plan(format!("table '{table_name}' not found")))?
        .arrow_schema()
        .map_err(|e| DataFusionError::External(Box::new(e)))
}

/// A remote database as a catalog: `<source>.<schema>.<table>`.
#[derive(Debug)]
pub struct RemoteCatalog {
    kind: &'static str,
    schemas: BTreeMap<String, Arc<RemoteSchema>>,
    /// Schemas fedsql adds itself: `pg_catalog` when a client connects with
    /// the source as its database.
    local: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl RemoteCatalog {
    /// A catalog of `tables`, each run through `provider`.
    ///
    /// Tables in `bare_schema` (the schema the source resolves unqualified
    /// names in: Postgres' `public`, a MariaDB connection's database) are
    /// named without their schema in the SQL sent. datafusion-federation
    /// renames expressions when the remote name differs from the local one,
    /// and loses aggregate names in the process (`sum(public.t.x)` vs
    /// `sum(t.x)`), so the common case avoids it.
    pub fn new(
        kind: &'static str,
        tables: Vec<RemoteTableInfo>,
        provider: Arc<SQLFederationProvider>,
        bare_schema: Option<&str>,
    ) -> Self {
        let mut schemas: BTreeMap<String, BTreeMap<String, RemoteTableInfo>> = BTreeMap::new();
        for table in tables {
            schemas
                .entry(table.schema.clone())
                .or_default()
                .insert(table.name.clone(), table);
        }
        RemoteCatalog {
            kind,
            local: RwLock::new(BTreeMap::new()),
            schemas: schemas
                .into_iter()
                .map(|(name, tables)| {
                    let schema = RemoteSchema {
                        provider: Arc::clone(&provider),
                        bare: bare_schema == Some(name.as_str()),
                        tables,
                    };
                    (name, Arc::new(schema))
                })
                .collect(),
        }
    }
}

impl CatalogProvider for RemoteCatalog {
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
                "schema {name} belongs to the {} source; it cannot be replaced",
                self.kind
            )));
        }
        let mut local = self.local.write().unwrap_or_else(|p| p.into_inner());
        Ok(local.insert(name.to_string(), schema))
    }
}

/// One remote schema; its tables are federated table providers.
#[derive(Debug)]
pub struct RemoteSchema {
    provider: Arc<SQLFederationProvider>,
    /// Whether its tables are named without the schema in remote SQL.
    bare: bool,
    tables: BTreeMap<String, RemoteTableInfo>,
}

#[async_trait]
impl SchemaProvider for RemoteSchema {
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
        let reference = if self.bare {
            TableReference::bare(info.name.as_str())
        } else {
            TableReference::partial(info.schema.as_str(), info.name.as_str())
        };
        let table = SourceTable::new(reference, schema, info.statistics.clone());
        let source = SQLTableSource::new_with_table(Arc::clone(&self.provider), Arc::new(table));
        Ok(Some(Arc::new(FederatedTableProviderAdaptor::new(
            Arc::new(source),
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }
}
