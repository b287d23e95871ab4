//! SQL cursors on the Postgres wire: `DECLARE … CURSOR FOR`, `FETCH`,
//! `MOVE`, `CLOSE`.
//!
//! A cursor is its query's running record-batch stream, kept by the
//! connection that declared it; `FETCH n` reads the next `n` rows from it and
//! encodes them in the format that `FETCH` is answered in (its Bind's result
//! formats over the extended protocol, text or `BINARY` over the simple one),
//! so a 100-million-row cursor holds one batch in memory, not its result.
//! Drivers describe a declared cursor as a portal of the same name
//! (psycopg's named cursors do, before every `FETCH`): [`Cursors::get`]
//! serves that Describe.
//!
//! Cursors only move forward (`FETCH PRIOR` and other backward moves answer
//! 55000); non-holdable cursors close when their transaction ends, holdable
//! ones (`WITH HOLD`) when the connection does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use fedsql_sql::connection::FetchDirection;
use futures::{stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::error::PgWireResult;

use crate::error::{Result, ServerError};

/// The cursors one connection has open. Kept in the connection's session
/// extensions.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<HashMap<String, Arc<Cursor>>>,
}

impl Cursors {
    /// Opens a cursor over `rows`; refuses a name already open (42P03).
    pub fn declare(&self, name: &str, cursor: Cursor) -> Result<()> {
        let mut open = self.lock();
        if open.contains_key(name) {
            return Err(ServerError::DuplicateCursor(name.to_string()));
        }
        open.insert(name.to_string(), Arc::new(cursor));
        Ok(())
    }

    /// The open cursor called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Cursor>> {
        self.lock().get(name).cloned()
    }

    /// Like [`Cursors::get`], but a missing cursor is 34000.
    pub fn expect(&self, name: &str) -> Result<Arc<Cursor>> {
        self.get(name)
            .ok_or_else(|| ServerError::UndefinedCursor(name.to_string()))
    }

    /// `CLOSE name` (34000 when it is not open) or `CLOSE ALL` (`None`).
    pub fn close(&self, name: Option<&str>) -> Result<()> {
        let mut open = self.lock();
        match name {
            None => open.clear(),
            Some(name) => {
                if open.remove(name).is_none() {
                    return Err(ServerError::UndefinedCursor(name.to_string()));
                }
            }
        }
        Ok(())
    }

    /// The end of a transaction: its non-holdable cursors close.
    pub fn end_transaction(&self) {
        self.lock().retain(|_, cursor| cursor.hold);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Cursor>>> {
        // A panic while holding this lock leaves a consistent map (every
        // operation is one insert or remove), so a poisoned lock is usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One declared cursor.
pub struct Cursor {
    name: String,
    schema: SchemaRef,
    /// `DECLARE … BINARY`: simple-protocol `FETCH` answers in binary.
    binary: bool,
    /// `WITH HOLD`: outlives its transaction.
    hold: bool,
    rows: tokio::sync::Mutex<CursorRows>,
}

/// Where a cursor is in its query's stream.
struct CursorRows {
    /// `None` once the stream has ended.
    stream: Option<SendableRecordBatchStream>,
    /// Rows read from the stream but not fetched yet.
    pending: Option<RecordBatch>,
    /// Rows fetched or moved past (Postgres's cursor position).
    position: u64,
}

impl Cursor {
    /// A cursor named `name` over a query's stream.
    pub fn new(name: &str, stream: SendableRecordBatchStream, binary: bool, hold: bool) -> Self {
        Cursor {
            name: name.to_string(),
            schema: stream.schema(),
            binary,
            hold,
            rows: tokio::sync::Mutex::new(CursorRows {
                stream: Some(stream),
                pending: None,
                position: 0,
            }),
        }
    }

    /// The row description, as a simple-protocol `FETCH` or a Describe of
    /// the cursor's portal reports it.
    pub fn fields(&self, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let default = if self.binary {
            Format::UnifiedBinary
        } else {
            Format::UnifiedText
        };
        arrow_schema_to_pg_fields(&self.schema, format.unwrap_or(&default), None)
    }

    /// `FETCH direction`: the rows, in `format` (or the cursor's own).
    pub async fn fetch(
        &self,
        direction: FetchDirection,
        format: Option<&Format>,
    ) -> Result<QueryResponse> {
        let batches = self.read(direction).await?;
        let fields = Arc::new(self.fields(format).map_err(internal)?);
        let fixes = crate::pg_text::TextFixes::for_fields(&fields);
        let rows: Vec<_> = batches
            .into_iter()
            .flat_map(|batch| encode_recordbatch(Arc::clone(&fields), batch))
            .map(|row| match &fixes {
                Some(fixes) => row.map(|r| fixes.apply(r)),
                None => row,
            })
            .collect();
        let mut response = QueryResponse::new(fields, stream::iter(rows));
        response.set_command_tag("FETCH");
        Ok(response)
    }

    /// `MOVE direction`: how many rows the cursor moved past.
    pub async fn skip(&self, direction: FetchDirection) -> Result<usize> {
        Ok(self
            .read(direction)
            .await?
            .iter()
            .map(RecordBatch::num_rows)
            .sum())
    }

    /// The rows `direction` names, advancing the cursor.
    async fn read(&self, direction: FetchDirection) -> Result<Vec<RecordBatch>> {
        let mut rows = self.rows.lock().await;
        let backward = || ServerError::CursorForwardOnly(self.name.clone());
        match direction {
            FetchDirection::Forward(n) => rows.take(count(n)).await,
            FetchDirection::All => rows.take(u64::MAX).await,
            FetchDirection::Relative(0) => Ok(Vec::new()),
            FetchDirection::Relative(n) if n > 0 => {
                rows.take(count(n) - 1).await?;
                rows.take(1).await
            }
            FetchDirection::Absolute(n) if n > 0 && count(n) > rows.position => {
                let skip = count(n) - rows.position - 1;
                rows.take(skip).await?;
                rows.take(1).await
            }
            FetchDirection::Last => {
                let rest = rows.take(u64::MAX).await?;
                Ok(rest
                    .iter()
                    .rev()
                    .find(|b| b.num_rows() > 0)
                    .map(|b| vec![b.slice(b.num_rows() - 1, 1)])
                    .unwrap_or_default())
            }
            FetchDirection::Relative(_)
            | FetchDirection::Absolute(_)
            | FetchDirection::Backward => Err(backward()),
        }
    }
}

impl CursorRows {
    /// Takes up to `limit` rows from the stream.
    async fn take(&mut self, limit: u64) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut wanted = limit;
        while wanted > 0 {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => {
                    let Some(stream) = self.stream.as_mut() else {
                        break;
                    };
                    match stream.next().await {
                        Some(batch) => batch.map_err(|e| ServerError::from_datafusion(&e, ""))?,
                        None => {
                            self.stream = None;
                            break;
                        }
                    }
                }
            };
            let rows = batch.num_rows() as u64;
            if rows <= wanted {
                wanted -= rows;
                batches.push(batch);
            } else {
                // `wanted < rows <= usize::MAX` here.
                let keep = wanted as usize;
                batches.push(batch.slice(0, keep));
                self.pending = Some(batch.slice(keep, batch.num_rows() - keep));
                wanted = 0;
            }
        }
        self.position = self.position.saturating_add(limit - wanted);
        Ok(batches)
    }
}

/// A non-negative row count.
fn count(n: i64) -> u64 {
    n.max(0).unsigned_abs()
}

fn internal(e: pgwire::error::PgWireError) -> ServerError {
    ServerError::Internal(e.to_string())
}
