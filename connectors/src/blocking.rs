//! Client libraries that block (ODBC drivers, librdkafka) run on tokio's
//! blocking pool, never on a runtime worker: one call at a time with
//! [`run_blocking`], a stream of batches with [`blocking_stream`].

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result as DfResult;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use tokio::sync::mpsc;

use crate::error::ConnectorError;

/// Runs `work` on the blocking pool; a panic in it becomes an error naming
/// the source, not a crash.
pub(crate) async fn run_blocking<T: Send + 'static>(
    source_name: &str,
    work: impl FnOnce() -> Result<T, ConnectorError> + Send + 'static,
) -> Result<T, ConnectorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ConnectorError::ConnectionLost {
            source_name: source_name.to_string(),
            message: format!("the client call failed: {e}"),
        })?
}

/// The sending end a blocking producer writes batches to. A failed send
/// means the consumer stopped reading (a `LIMIT` reached downstream): the
/// producer should stop.
pub(crate) type BatchSender = mpsc::Sender<DfResult<RecordBatch>>;

/// A stream of `schema` batches that `produce` (started here) sends. Two
/// batches are buffered, so a slow consumer holds the producer back.
pub(crate) fn blocking_stream(
    schema: SchemaRef,
    produce: impl FnOnce(BatchSender) + Send + 'static,
) -> SendableRecordBatchStream {
    let (tx, rx) = mpsc::channel::<DfResult<RecordBatch>>(2);
    tokio::task::spawn_blocking(move || produce(tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|batch| (batch, rx))
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}
