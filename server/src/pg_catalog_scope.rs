//! `pg_catalog` as Postgres scopes it: per database.
//!
//! datafusion-pg-catalog builds `pg_namespace`, `pg_class` and friends from
//! every catalog, so psql's `\dn` and `\dt` in database `demo` would list the
//! schemas and tables of every source too. In Postgres those tables describe
//! the current database only, while `pg_database` (psql's `\l`) lists all;
//! [`DatabaseScope`] gives datafusion-pg-catalog exactly that view.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProviderList;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::TableType;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables,
};

/// Every catalog's name, but only `database`'s schemas and tables.
#[derive(Debug, Clone)]
pub struct DatabaseScope {
    catalogs: Arc<dyn CatalogProviderList>,
    database: String,
}

#[async_trait]
impl CatalogInfo for DatabaseScope {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        self.catalogs.catalog_names().await
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        if catalog != self.database {
            return Ok(Some(Vec::new()));
        }
        self.catalogs.schema_names(catalog).await
    }

    async fn table_names(
        &self,
        catalog: &str,
        schema: &str,
    ) -> Result<Option<Vec<String>>, DataFusionError> {
        if catalog != self.database {
            return Ok(None);
        }
        self.catalogs.table_names(catalog, schema).await
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        self.catalogs.table_schema(catalog, schema, table).await
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>, DataFusionError> {
        self.catalogs.table_type(catalog, schema, table).await
    }
}

/// The static part of pg_catalog (types, operators…), loaded once.
fn static_tables() -> Result<Arc<PgCatalogStaticTables>, DataFusionError> {
    static TABLES: OnceLock<Arc<PgCatalogStaticTables>> = OnceLock::new();
    if let Some(tables) = TABLES.get() {
        return Ok(Arc::clone(tables));
    }
    let tables = Arc::new(PgCatalogStaticTables::try_new()?);
    Ok(Arc::clone(TABLES.get_or_init(|| tables)))
}

/// Replaces `database`'s `pg_catalog` schema with one scoped to it.
pub fn scope_pg_catalog(ctx: &SessionContext, database: &str) -> Result<(), DataFusionError> {
    let catalogs = ctx.state().catalog_list().clone();
    let Some(catalog) = catalogs.catalog(database) else {
        return Ok(());
    };
    let scope = DatabaseScope {
        catalogs,
        database: database.to_string(),
    };
    let provider = PgCatalogSchemaProvider::try_new(scope, static_tables()?, EmptyContextProvider)?;
    catalog.register_schema("pg_catalog", Arc::new(provider))?;
    Ok(())
}
