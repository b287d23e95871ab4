//! Cancelling a statement the source is still running once nobody reads
//! its rows (the client cancelled, a `LIMIT` was reached, the query
//! failed elsewhere).
//!
//! An ODBC call blocks its thread until the driver returns: while
//! `SQLExecDirect` waits for a long query, the fetch thread cannot notice
//! that its reader went away. ODBC lets another thread call `SQLCancel` on
//! a statement that is executing; [`StatementCanceller`] does that from a
//! small task that waits for the batch channel to close.
//!
//! Only the execution is cancelled this way. Once the driver returns, the
//! canceller is disarmed: cancelling during the fetch loop would close the
//! cursor behind odbc-api's back (and its drop panics on the closed
//! cursor); the loop notices the closed channel at its next batch anyway.

use std::sync::{Arc, Mutex};

use odbc_api::sys::{HStmt, SQLCancel, SqlReturn};
use tokio::sync::oneshot;

use crate::blocking::BatchSender;

/// The statement while it may be cancelled, and whether it was.
struct Slot {
    statement: Option<RawStatement>,
    cancelled: bool,
}

/// A raw statement handle, sent to the watching task. It is only used while
/// the handle is alive: the fetch thread takes it out of the shared slot
/// (under the lock) before it frees the statement.
struct RawStatement(HStmt);

// SAFETY: ODBC allows `SQLCancel` on a statement from a thread other than
// the one executing it; the handle is never used after it is freed (see
// `StatementCanceller::drop`).
unsafe impl Send for RawStatement {}

/// Cancels `statement` at the source if the reader of `rows` goes away
/// while the statement is alive. Drop it before the statement is freed.
pub(super) struct StatementCanceller {
    slot: Arc<Mutex<Slot>>,
    // Dropping it ends the watching task.
    _done: oneshot::Sender<()>,
}

impl StatementCanceller {
    /// Starts watching; without a tokio runtime (not the case on the
    /// blocking pool) there is nothing to watch with and nothing is
    /// cancelled.
    pub(super) fn watch(statement: HStmt, rows: &BatchSender, source_name: &str) -> Self {
        let slot = Arc::new(Mutex::new(Slot {
            statement: Some(RawStatement(statement)),
            cancelled: false,
        }));
        let (done, finished) = oneshot::channel::<()>();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let rows = rows.clone();
            let watched = Arc::clone(&slot);
            let source_name = source_name.to_string();
            runtime.spawn(async move {
                tokio::select! {
                    _ = rows.closed() => cancel(&watched, &source_name),
                    _ = finished => {}
                }
            });
        }
        StatementCanceller { slot, _done: done }
    }

    /// Stops watching (the driver returned from the execution); true if the
    /// statement was cancelled meanwhile, when its cursor must not be used
    /// or closed.
    pub(super) fn disarm(&self) -> bool {
        let mut slot = lock(&self.slot);
        slot.statement = None;
        slot.cancelled
    }
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    match slot.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn cancel(slot: &Mutex<Slot>, source_name: &str) {
    let mut slot = lock(slot);
    if let Some(statement) = slot.statement.as_ref() {
        // SAFETY: the handle is alive while it is in the slot, and the slot
        // is locked for the whole call.
        let result = unsafe { SQLCancel(statement.0) };
        if result == SqlReturn::ERROR {
            tracing::warn!(source = %source_name, "the driver refused to cancel a statement");
        } else {
            tracing::info!(source = %source_name, "cancelled a remote statement nobody reads");
        }
        slot.cancelled = true;
    }
}

impl Drop for StatementCanceller {
    fn drop(&mut self) {
        self.disarm();
    }
}
