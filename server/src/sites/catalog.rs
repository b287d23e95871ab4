//! The coordinator's view of its sites' tables, for analytics.
//!
//! - `site_<name>.<schema>.<table>`: each table site `<name>` offers (as its
//!   last poll said). It is a datafusion-federation table: a sub-plan over
//!   one site's tables (a whole `GROUP BY` included) goes to the site as one
//!   [`Task::Query`], in SQL, and the site answers inside its analytics
//!   policy (see [`super::analytics`]) or refuses, naming the table and the
//!   policy.
//! - `sites.<schema>.<table>`: that table at every site that offers it with
//!   the same columns, as one `UNION ALL` with a `_site` column. An
//!   aggregate over it is split into one partial aggregate per site
//!   (`fedsql_connectors::pushdown`'s union rule), so only partials leave
//!   the sites.
//!
//! Both catalogs are read from the registry when a query is planned: a site
//! that connects (or changes what it offers) is visible to the next query.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{Column, TableReference};
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{lit, Expr, LogicalPlanBuilder};
use datafusion::physical_plan::{PhysicalExpr, SendableRecordBatchStream};
use datafusion::sql::unparser::dialect::{Dialect, PostgreSqlDialect};
use datafusion_federation::sql::{SQLExecutor, SQLFederationProvider, SQLTableSource};
use datafusion_federation::FederatedTableProviderAdaptor;
use fedsql_connectors::pushdown::partitioned::{federation_provider, lazy_stream};
use fedsql_connectors::pushdown::SourceDialect;
use fedsql_connectors::remote_log::QueryReport;
use fedsql_connectors::statistics::{SourceTable, TableStatistics};
use fedsql_connectors::{ConnectorError, RemoteQueryObserver};

use super::agent::{decode_batches, decode_schema};
use super::protocol::{OfferedTable, Reply, Task};
use super::registry::{CallError, SiteRegistry};

/// The prefix of a site's catalog: `site_<name>`.
pub const SITE_CATALOG_PREFIX: &str = "site_";

/// The catalog of tables unioned over sites.
pub const SITES_CATALOG: &str = "sites";

/// The column naming the site each row of a `sites.…` table comes from.
pub const SITE_COLUMN: &str = "_site";

/// How long a site may take to answer an analytics query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(600);

/// The catalog name of site `site`.
pub fn site_catalog_name(site: &str) -> String {
    format!("{SITE_CATALOG_PREFIX}{site}")
}

/// `(schema, table)` of an offered table's `catalog.schema.table` name.
fn schema_and_table(offered: &OfferedTable) -> Option<(String, String)> {
    let mut parts = offered.name.splitn(3, '.');
    let (_catalog, schema, table) = (parts.next()?, parts.next()?, parts.next()?);
    Some((schema.to_string(), table.to_string()))
}

/// A site's answer to one query.
struct Answer {
    batches: Vec<RecordBatch>,
    suppressed: u64,
    /// `(epsilon spent, budget left)` of a differentially private answer.
    privacy: Option<(f64, f64)>,
}

/// Runs SQL that datafusion-federation unparsed at one site.
#[derive(Clone)]
pub struct SiteExecutor {
    site: String,
    /// `site_<name>`, in messages and `fedsql.system.queries`.
    source_name: String,
    registry: Arc<SiteRegistry>,
    observer: Option<Arc<dyn RemoteQueryObserver>>,
}

impl SiteExecutor {
    /// The tables the site offers, as its last poll said.
    fn offered(&self) -> Vec<OfferedTable> {
        self.registry.offered_tables(&self.site)
    }

    /// Sends `sql` to the site and returns its rows, cast to `schema` (the
    /// plan's types; the site's result has the same columns in order).
    async fn fetch(
        &self,
        sql: String,
        schema: SchemaRef,
    ) -> Result<Vec<RecordBatch>, ConnectorError> {
        let mut report = QueryReport::new(self.observer.clone(), &self.source_name, &sql);
        let result = self.ask(&sql, &schema).await;
        match &result {
            Ok(answer) => {
                report.rows = answer.batches.iter().map(|b| b.num_rows() as u64).sum();
                report.bytes = answer
                    .batches
                    .iter()
                    .map(|b| b.get_array_memory_size() as u64)
                    .sum();
                let mut notes = Vec::new();
                if answer.suppressed > 0 {
                    notes.push(format!(
                        "{} group(s) suppressed by the site's min_group_size",
                        answer.suppressed
                    ));
                    tracing::info!(site = %self.site, suppressed = answer.suppressed, "groups suppressed at the site");
                }
                if let Some((epsilon, left)) = answer.privacy {
                    notes.push(format!(
                        "differentially private: epsilon {epsilon} spent, {left:.3} left at the site"
                    ));
                }
                if !notes.is_empty() {
                    report.set_sql(format!("{sql} -- {}", notes.join("; ")));
                }
            }
            Err(e) => report.error = Some((e.sqlstate().to_string(), e.to_string())),
        }
        result.map(|answer| answer.batches)
    }

    async fn ask(&self, sql: &str, schema: &SchemaRef) -> Result<Answer, ConnectorError> {
        let task = Task::Query {
            sql: sql.to_string(),
        };
        let reply = self
            .registry
            .call(&self.site, task, QUERY_TIMEOUT)
            .await
            .map_err(|e| match e {
                CallError::Timeout(..) | CallError::Dropped(_) => ConnectorError::ConnectionLost {
                    source_name: self.source_name.clone(),
                    message: e.to_string(),
                },
                CallError::Unknown(_) | CallError::Offline(_) => ConnectorError::Unreachable {
                    source_name: self.source_name.clone(),
                    addr: format!("site {}", self.site),
                    message: e.to_string(),
                },
            })?;
        let (batches, suppressed, privacy) = match reply {
            Reply::Rows {
                batches,
                suppressed,
                epsilon,
                budget_left,
            } => (batches, suppressed, epsilon.zip(budget_left)),
            Reply::Refused { message } => {
                return Err(ConnectorError::Refused {
                    source_name: self.source_name.clone(),
                    message,
                })
            }
            Reply::Failed { message } => {
                return Err(ConnectorError::Remote {
                    source_name: self.source_name.clone(),
                    sqlstate: "42000".into(),
                    message,
                })
            }
            other => {
                return Err(self.shape(format!("answered a query with {other:?}")));
            }
        };
        let (_, decoded) = decode_batches(&batches).map_err(|e| self.shape(e))?;
        let batches = decoded
            .iter()
            .map(|batch| self.conform(batch, schema))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Answer {
            batches,
            suppressed,
            privacy,
        })
    }

    /// `batch` with `schema`'s names and types.
    fn conform(
        &self,
        batch: &RecordBatch,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, ConnectorError> {
        if batch.num_columns() != schema.fields().len() {
            return Err(self.shape(format!(
                "{} columns where {} were planned",
                batch.num_columns(),
                schema.fields().len()
            )));
        }
        Ok(crate::flight::results::to_wire_batch(
            batch.clone(),
            schema,
        )?)
    }

    fn shape(&self, message: String) -> ConnectorError {
        ConnectorError::UnexpectedShape {
            source_name: self.source_name.clone(),
            message,
        }
    }
}

impl std::fmt::Debug for SiteExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteExecutor")
            .field("site", &self.site)
            .finish()
    }
}

#[async_trait]
impl SQLExecutor for SiteExecutor {
    fn name(&self) -> &str {
        &self.source_name
    }

    fn compute_context(&self) -> Option<String> {
        Some(SourceDialect::Fedsql.compute_context(&format!("site:{}", self.site)))
    }

    fn dialect(&self) -> Arc<dyn Dialect> {
        Arc::new(PostgreSqlDialect {})
    }

    fn execute(
        &self,
        query: &str,
        schema: SchemaRef,
        _filters: &[Arc<dyn PhysicalExpr>],
    ) -> DfResult<SendableRecordBatchStream> {
        let executor = self.clone();
        let (sql, planned) = (query.to_string(), Arc::clone(&schema));
        Ok(lazy_stream(schema, async move {
            let batches = executor.fetch(sql, planned).await?;
            Ok(futures::stream::iter(batches.into_iter().map(Ok)))
        }))
    }

    async fn table_names(&self) -> DfResult<Vec<String>> {
        Ok(self
            .offered()
            .iter()
            .filter_map(schema_and_table)
            .map(|(schema, table)| format!("{schema}.{table}"))
            .collect())
    }

    async fn get_table_schema(&self, table_name: &str) -> DfResult<SchemaRef> {
        self.offered()
            .iter()
            .find(|t| schema_and_table(t).is_some_and(|(s, n)| format!("{s}.{n}") == table_name))
            .and_then(|t| t.schema.as_deref())
            .and_then(|s| decode_schema(s).ok())
            .ok_or_else(|| DataFusionError::Plan(format!("table '{table_name}' not found")))
    }
}

/// `site_<name>`: the tables one site offers.
#[derive(Debug)]
pub struct SiteCatalog {
    executor: SiteExecutor,
    provider: Arc<SQLFederationProvider>,
}

impl SiteCatalog {
    /// The catalog of site `site`.
    pub fn new(
        site: &str,
        registry: Arc<SiteRegistry>,
        observer: Option<Arc<dyn RemoteQueryObserver>>,
    ) -> SiteCatalog {
        let executor = SiteExecutor {
            site: site.to_string(),
            source_name: site_catalog_name(site),
            registry,
            observer: observer.clone(),
        };
        let provider = Arc::new(federation_provider(
            Arc::new(executor.clone()),
            None,
            observer,
        ));
        SiteCatalog { executor, provider }
    }

    /// The table `schema.table`, if the site offers it.
    fn table(&self, schema: &str, table: &str) -> Option<Arc<dyn TableProvider>> {
        let offered = self.executor.offered();
        let found = offered
            .iter()
            .find(|t| schema_and_table(t).is_some_and(|(s, n)| s == schema && n == table))?;
        let arrow_schema = decode_schema(found.schema.as_deref()?).ok()?;
        // Named in the SQL sent as here (the site reads its own name as its
        // database): datafusion-federation renames nothing then.
        let remote = TableReference::full(self.executor.source_name.as_str(), schema, table);
        let source = SourceTable::new(remote, arrow_schema, TableStatistics::default());
        let source = SQLTableSource::new_with_table(Arc::clone(&self.provider), Arc::new(source));
        Some(Arc::new(FederatedTableProviderAdaptor::new(Arc::new(
            source,
        ))))
    }
}

impl CatalogProvider for SiteCatalog {
    fn schema_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self
            .executor
            .offered()
            .iter()
            .filter_map(schema_and_table)
            .map(|(schema, _)| schema)
            .collect();
        names.into_iter().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schema_names().contains(&name.to_string()).then(|| {
            Arc::new(SiteSchema {
                catalog: Arc::new(SiteCatalog {
                    executor: self.executor.clone(),
                    provider: Arc::clone(&self.provider),
                }),
                schema: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

/// One schema of a site's catalog.
#[derive(Debug)]
struct SiteSchema {
    catalog: Arc<SiteCatalog>,
    schema: String,
}

#[async_trait]
impl SchemaProvider for SiteSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog
            .executor
            .offered()
            .iter()
            .filter_map(schema_and_table)
            .filter(|(schema, _)| *schema == self.schema)
            .map(|(_, table)| table)
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.catalog.table(&self.schema, name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}

/// `sites`: each table offered by any site, unioned over the sites that
/// offer it with the same columns.
pub struct SitesCatalog {
    registry: Arc<SiteRegistry>,
    observer: Option<Arc<dyn RemoteQueryObserver>>,
}

impl std::fmt::Debug for SitesCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SitesCatalog").finish()
    }
}

impl SitesCatalog {
    /// The union catalog over the sites of `registry`.
    pub fn new(
        registry: Arc<SiteRegistry>,
        observer: Option<Arc<dyn RemoteQueryObserver>>,
    ) -> Self {
        SitesCatalog { registry, observer }
    }

    /// `(site, schema, table)` of every table every site offers.
    fn offered(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for site in self.registry.names() {
            for table in self.registry.offered_tables(&site) {
                if let Some((schema, name)) = schema_and_table(&table) {
                    out.push((site.clone(), schema, name));
                }
            }
        }
        out
    }

    /// The union of `schema.table` over the sites offering it with the
    /// columns of the first (by name) that does.
    fn union(&self, schema: &str, table: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let mut columns: Option<SchemaRef> = None;
        let mut plan: Option<LogicalPlanBuilder> = None;
        for (site, s, t) in self.offered() {
            if s != schema || t != table {
                continue;
            }
            let catalog_name = site_catalog_name(&site);
            let catalog =
                SiteCatalog::new(&site, Arc::clone(&self.registry), self.observer.clone());
            let Some(provider) = catalog.table(schema, table) else {
                continue;
            };
            let provider_schema = provider.schema();
            match &columns {
                Some(first) if first.fields() != provider_schema.fields() => {
                    tracing::warn!(site = %site, table = %format!("{schema}.{table}"), "left out of sites.{schema}.{table}: its columns differ from the other sites'");
                    continue;
                }
                Some(_) => {}
                None => columns = Some(Arc::clone(&provider_schema)),
            }
            let reference = TableReference::full(catalog_name, schema, table);
            let projection: Vec<Expr> = provider_schema
                .fields()
                .iter()
                .map(|f| Expr::Column(Column::new(Some(reference.clone()), f.name())))
                .chain(std::iter::once(lit(site.clone()).alias(SITE_COLUMN)))
                .collect();
            let branch = LogicalPlanBuilder::scan(reference, provider_as_source(provider), None)?
                .project(projection)?;
            plan = Some(match plan {
                None => branch,
                Some(plan) => plan.union(branch.build()?)?,
            });
        }
        match plan {
            None => Ok(None),
            Some(plan) => Ok(Some(Arc::new(ViewTable::new(plan.build()?, None)))),
        }
    }
}

impl CatalogProvider for SitesCatalog {
    fn schema_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self.offered().into_iter().map(|(_, s, _)| s).collect();
        names.into_iter().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schema_names().contains(&name.to_string()).then(|| {
            Arc::new(SitesSchema {
                catalog: Arc::new(SitesCatalog {
                    registry: Arc::clone(&self.registry),
                    observer: self.observer.clone(),
                }),
                schema: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

/// One schema of the `sites` catalog.
#[derive(Debug)]
struct SitesSchema {
    catalog: Arc<SitesCatalog>,
    schema: String,
}

#[async_trait]
impl SchemaProvider for SitesSchema {
    fn table_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self
            .catalog
            .offered()
            .into_iter()
            .filter(|(_, s, _)| *s == self.schema)
            .map(|(_, _, t)| t)
            .collect();
        names.into_iter().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.catalog.union(&self.schema, name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}
