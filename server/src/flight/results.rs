//! Results between `GetFlightInfo` and `DoGet`.
//!
//! Flight SQL answers a statement in two calls: `GetFlightInfo` plans it and
//! returns the schema and one ticket per endpoint, `DoGet` streams one
//! endpoint. The planned physical plan waits here, keyed by an unguessable
//! handle; each endpoint is one output partition, executed when its ticket
//! is presented, so rows stream as they are produced and nothing is
//! materialized. Unclaimed results expire.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::DataFrame;
use futures::stream::{self, BoxStream, StreamExt};

use crate::engine::Engine;
use crate::error::ServerError;
use crate::query_log::Finished;

/// How long a planned result waits for its `DoGet`.
const UNCLAIMED_TTL: Duration = Duration::from_secs(600);

/// A statement's answer before it is fetched.
pub enum Answer {
    /// A query, planned but not started.
    Plan {
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
    },
    /// A command that already ran: one row with its tag.
    Command(String),
}

impl Answer {
    /// Plans a frame; partitions that can be read independently become
    /// separate endpoints.
    pub async fn from_frame(frame: DataFrame, sql: &str) -> Result<Answer, ServerError> {
        let task = Arc::new(frame.task_ctx());
        let plan = frame
            .create_physical_plan()
            .await
            .map_err(|e| ServerError::from_datafusion(&e, sql))?;
        let plan = if plan.output_partitioning().partition_count() > 1 && !independent(&plan) {
            Arc::new(CoalescePartitionsExec::new(plan)) as Arc<dyn ExecutionPlan>
        } else {
            plan
        };
        Ok(Answer::Plan { plan, task })
    }

    /// The schema clients see (see [`wire_type`]).
    pub fn schema(&self) -> SchemaRef {
        match self {
            Answer::Plan { plan, .. } => wire_schema(&plan.schema()),
            Answer::Command(_) => command_schema(),
        }
    }

    fn partitions(&self) -> usize {
        match self {
            Answer::Plan { plan, .. } => plan.output_partitioning().partition_count().max(1),
            Answer::Command(_) => 1,
        }
    }
}

/// Whether a plan's output partitions can be read one after another without
/// buffering: a repartition feeds all of its outputs from shared inputs, so a
/// client reading endpoint 0 to the end would pile up endpoint 1 in memory.
fn independent(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.name() != "RepartitionExec" && plan.children().into_iter().all(independent)
}

/// Records the statement in `fedsql.system.queries` once every endpoint is
/// read, or at the first error.
pub struct Tracker {
    engine: Arc<Engine>,
    database: String,
    user: String,
    sql: String,
    started: (SystemTime, Instant),
    open: AtomicUsize,
    done: AtomicBool,
}

impl Tracker {
    /// A tracker for a statement started at `started`.
    pub fn new(
        engine: Arc<Engine>,
        database: &str,
        user: &str,
        sql: &str,
        started: (SystemTime, Instant),
    ) -> Self {
        Tracker {
            engine,
            database: database.to_string(),
            user: user.to_string(),
            sql: sql.to_string(),
            started,
            open: AtomicUsize::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// Records the outcome once; later calls do nothing.
    pub fn finish(&self, error: Option<&ServerError>) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        self.engine.queries().record(Finished {
            started: self.started.0,
            elapsed: self.started.1.elapsed(),
            database: &self.database,
            user: &self.user,
            protocol: "flight",
            query: &self.sql,
            error: error.map(|e| (e.sqlstate(), e.to_string())),
            received: None,
        });
    }

    fn endpoint_done(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.finish(None);
        }
    }
}

struct Pending {
    owner: String,
    answer: Arc<Answer>,
    unread: BTreeSet<usize>,
    created: Instant,
    tracker: Arc<Tracker>,
}

/// Planned results waiting for their `DoGet`s.
#[derive(Default)]
pub struct PendingResults {
    entries: Mutex<HashMap<String, Pending>>,
}

/// One endpoint's batches, already in the wire schema.
pub type BatchStream = BoxStream<'static, Result<RecordBatch, ServerError>>;

impl PendingResults {
    /// Parks an answer for `owner` and returns its tickets, one per endpoint.
    pub fn insert(&self, owner: &str, answer: Answer, tracker: Arc<Tracker>) -> Vec<String> {
        let handle = super::random_hex(16);
        let partitions = answer.partitions();
        tracker.open.store(partitions, Ordering::SeqCst);
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, p| {
            let fresh = now.duration_since(p.created) < UNCLAIMED_TTL;
            if !fresh {
                p.tracker.finish(Some(&ServerError::Query {
                    sqlstate: "57014".into(),
                    message: "result was never fetched".into(),
                    position: None,
                }));
            }
            fresh
        });
        entries.insert(
            handle.clone(),
            Pending {
                owner: owner.to_string(),
                answer: Arc::new(answer),
                unread: (0..partitions).collect(),
                created: now,
                tracker,
            },
        );
        (0..partitions).map(|p| format!("{handle}/{p}")).collect()
    }

    /// Starts streaming the endpoint a ticket names; each ticket works once.
    pub fn take(&self, owner: &str, ticket: &str) -> Result<(SchemaRef, BatchStream), ServerError> {
        let unknown = || ServerError::Query {
            sqlstate: "34000".into(),
            message: "unknown or already fetched ticket".into(),
            position: None,
        };
        let (handle, partition) = ticket.split_once('/').ok_or_else(unknown)?;
        let partition: usize = partition.parse().map_err(|_| unknown())?;
        let (answer, tracker) = {
            let mut entries = self.lock();
            let pending = entries.get_mut(handle).ok_or_else(unknown)?;
            if pending.owner != owner || !pending.unread.remove(&partition) {
                return Err(unknown());
            }
            let taken = (Arc::clone(&pending.answer), Arc::clone(&pending.tracker));
            if pending.unread.is_empty() {
                entries.remove(handle);
            }
            taken
        };
        let sql = tracker.sql.clone();
        let batches: BatchStream = match answer.as_ref() {
            Answer::Command(tag) => {
                let batch = RecordBatch::try_new(
                    command_schema(),
                    vec![Arc::new(StringArray::from(vec![tag.as_str()])) as ArrayRef],
                )
                .map_err(|e| arrow_error(e, &sql));
                stream::once(async move { batch }).boxed()
            }
            Answer::Plan { plan, task } => {
                let schema = wire_schema(&plan.schema());
                let rows = plan
                    .execute(partition, Arc::clone(task))
                    .map_err(|e| ServerError::from_datafusion(&e, &sql))?;
                // A panic while computing a batch ends this stream with
                // XX000, not the connection.
                std::panic::AssertUnwindSafe(rows)
                    .catch_unwind()
                    .map(move |batch| match batch {
                        Ok(Ok(batch)) => {
                            to_wire_batch(batch, &schema).map_err(|e| arrow_error(e, &sql))
                        }
                        Ok(Err(e)) => Err(ServerError::from_datafusion(&e, &sql)),
                        Err(payload) => Err(ServerError::Internal(crate::error::panic_message(
                            payload.as_ref(),
                        ))),
                    })
                    .boxed()
            }
        };
        Ok((answer.schema(), tracked(batches, tracker)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reports the end of an endpoint's stream, or its error, to the tracker.
fn tracked(batches: BatchStream, tracker: Arc<Tracker>) -> BatchStream {
    stream::unfold(
        (batches, Some(tracker)),
        |(mut batches, tracker)| async move {
            let tracker = tracker?;
            match batches.next().await {
                Some(Ok(batch)) => Some((Ok(batch), (batches, Some(tracker)))),
                Some(Err(e)) => {
                    tracker.finish(Some(&e));
                    Some((Err(e), (batches, None)))
                }
                None => {
                    tracker.endpoint_done();
                    None
                }
            }
        },
    )
    .boxed()
}

fn arrow_error(e: ArrowError, sql: &str) -> ServerError {
    ServerError::from_datafusion(
        &datafusion::error::DataFusionError::ArrowError(Box::new(e), None),
        sql,
    )
}

/// The one-column answer of a command.
pub fn command_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "command",
        DataType::Utf8,
        false,
    )]))
}

/// The type a column travels as. DataFusion reads strings as `Utf8View`,
/// which older Flight clients (JDBC, ADBC builds before Arrow 16) cannot
/// read; they get `Utf8`/`Binary`, the types every Arrow reader knows.
pub fn wire_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(Arc::new(wire_field(f))),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(wire_field(f))),
        DataType::ListView(f) => DataType::List(Arc::new(wire_field(f))),
        DataType::LargeListView(f) => DataType::LargeList(Arc::new(wire_field(f))),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(wire_field(f)), *n),
        DataType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|f| Arc::new(wire_field(f))).collect())
        }
        other => other.clone(),
    }
}

fn wire_field(field: &Field) -> Field {
    field.clone().with_data_type(wire_type(field.data_type()))
}

/// [`wire_type`] applied to every column.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| Arc::new(wire_field(f)))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// `batch` with `schema`'s names and types: the columns whose type differs
/// are cast (the Flight wire schema; a site's answer to the planned schema).
pub(crate) fn to_wire_batch(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;

    #[test]
    fn view_types_travel_as_plain_types() {
        let nested = DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true)));
        assert_eq!(
            wire_type(&nested),
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
        );
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringViewArray::from(vec![Some("a"), None])) as ArrayRef],
        )
        .unwrap();
        let wire = to_wire_batch(batch, &wire_schema(&schema)).unwrap();
        assert_eq!(wire.column(0).data_type(), &DataType::Utf8);
        assert_eq!(wire.column(0).null_count(), 1);
    }
}
