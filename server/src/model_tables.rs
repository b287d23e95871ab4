//! `fedsql.system.models`, `fedsql.system.training_rounds` and
//! `fedsql.system.model_features`: the model registry as tables, read from
//! the registry's files at scan time (so they survive restarts).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use fedsql_udfs::features::Encoding;
use fedsql_udfs::registry::{ModelVersion, RoundRecord, TrainingRun};

use crate::system_tables::timestamp;

/// Metrics as a JSON object, e.g. `{"accuracy":0.874,"loss":0.31}`.
pub fn metrics_json(metrics: &[(String, f64)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = metrics
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Schema of `fedsql.system.models`.
pub fn models_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("active", DataType::Boolean, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("strategy", DataType::Utf8, false),
        Field::new("rounds", DataType::Int64, false),
        Field::new("clients", DataType::Int64, false),
        Field::new("parameters", DataType::Int64, false),
        Field::new("created_at", timestamp(), false),
        Field::new("metrics", DataType::Utf8, false),
        Field::new(
            "input_reads",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ]))
}

/// Rows of `fedsql.system.models`, one per version.
pub fn models_batch(versions: &[(ModelVersion, bool)]) -> DfResult<RecordBatch> {
    let mut model = StringBuilder::new();
    let mut version = Int64Builder::new();
    let mut active = BooleanBuilder::new();
    let mut kind = StringBuilder::new();
    let mut target = StringBuilder::new();
    let mut strategy = StringBuilder::new();
    let mut rounds = Int64Builder::new();
    let mut clients = Int64Builder::new();
    let mut parameters = Int64Builder::new();
    let mut created = TimestampMicrosecondBuilder::new();
    let mut metrics = StringBuilder::new();
    let mut reads = ListBuilder::new(StringBuilder::new());
    for (m, is_active) in versions {
        model.append_value(&m.model);
        version.append_value(m.version as i64);
        active.append_value(*is_active);
        kind.append_value(&m.kind);
        target.append_value(&m.target);
        strategy.append_value(&m.strategy);
        rounds.append_value(i64::from(m.rounds));
        clients.append_value(m.clients.len() as i64);
        parameters.append_value(m.architecture.parameter_count() as i64);
        created.append_value(m.created_at_us);
        metrics.append_value(metrics_json(&m.metrics));
        reads.append_value(m.input_reads.iter().map(Some));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(active.finish()),
        Arc::new(kind.finish()),
        Arc::new(target.finish()),
        Arc::new(strategy.finish()),
        Arc::new(rounds.finish()),
        Arc::new(clients.finish()),
        Arc::new(parameters.finish()),
        Arc::new(created.finish()),
        Arc::new(metrics.finish()),
        Arc::new(reads.finish()),
    ];
    Ok(RecordBatch::try_new(models_schema(), columns)?)
}

/// Schema of `fedsql.system.training_rounds`.
pub fn training_rounds_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("round", DataType::Int64, false),
        Field::new("client", DataType::Utf8, false),
        Field::new("phase", DataType::Utf8, false),
        Field::new("num_examples", DataType::Int64, false),
        Field::new("loss", DataType::Float64, true),
        Field::new("accuracy", DataType::Float64, true),
        Field::new("rmse", DataType::Float64, true),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("bytes_sent", DataType::Int64, true),
        Field::new("bytes_received", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
    ]))
}

/// Rows of `fedsql.system.training_rounds`: every saved version's history,
/// then the rounds finished so far of versions being trained (`live`).
pub fn training_rounds_batch(
    versions: &[(ModelVersion, bool)],
    live: &[(String, u64, Vec<RoundRecord>)],
) -> DfResult<RecordBatch> {
    let mut model = StringBuilder::new();
    let mut version = Int64Builder::new();
    let mut round = Int64Builder::new();
    let mut client = StringBuilder::new();
    let mut phase = StringBuilder::new();
    let mut examples = Int64Builder::new();
    let mut loss = Float64Builder::new();
    let mut accuracy = Float64Builder::new();
    let mut rmse = Float64Builder::new();
    let mut duration = Int64Builder::new();
    let mut sent = Int64Builder::new();
    let mut received = Int64Builder::new();
    let mut status = StringBuilder::new();
    let saved = versions
        .iter()
        .map(|(m, _)| (m.model.as_str(), m.version, m.history.as_slice()));
    let training = live.iter().map(|(m, v, h)| (m.as_str(), *v, h.as_slice()));
    for (name, number, history) in saved.chain(training) {
        for r in history {
            model.append_value(name);
            version.append_value(number as i64);
            round.append_value(i64::from(r.round));
            client.append_value(&r.client);
            phase.append_value(&r.phase);
            examples.append_value(r.num_examples as i64);
            loss.append_option(r.loss);
            accuracy.append_option(r.accuracy);
            rmse.append_option(r.rmse);
            duration.append_value(r.duration_ms as i64);
            sent.append_option(r.bytes_sent.map(|b| b as i64));
            received.append_option(r.bytes_received.map(|b| b as i64));
            status.append_value(&r.status);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(round.finish()),
        Arc::new(client.finish()),
        Arc::new(phase.finish()),
        Arc::new(examples.finish()),
        Arc::new(loss.finish()),
        Arc::new(accuracy.finish()),
        Arc::new(rmse.finish()),
        Arc::new(duration.finish()),
        Arc::new(sent.finish()),
        Arc::new(received.finish()),
        Arc::new(status.finish()),
    ];
    Ok(RecordBatch::try_new(training_rounds_schema(), columns)?)
}

/// Schema of `fedsql.system.training_runs`.
pub fn training_runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rounds_completed", DataType::Int64, false),
        Field::new("rounds", DataType::Int64, true),
        Field::new("clients", DataType::Utf8, true),
        Field::new("database", DataType::Utf8, true),
        Field::new("started_at", timestamp(), true),
        Field::new("updated_at", timestamp(), true),
        Field::new("error", DataType::Utf8, true),
        Field::new("statement", DataType::Utf8, true),
    ]))
}

/// Rows of `fedsql.system.training_runs`: runs in progress, and runs a
/// restart or an error interrupted (`RESUME TRAINING` continues them).
pub fn training_runs_batch(runs: &[TrainingRun]) -> DfResult<RecordBatch> {
    let mut model = StringBuilder::new();
    let mut version = Int64Builder::new();
    let mut status = StringBuilder::new();
    let mut completed = Int64Builder::new();
    let mut rounds = Int64Builder::new();
    let mut clients = StringBuilder::new();
    let mut database = StringBuilder::new();
    let mut started = TimestampMicrosecondBuilder::new();
    let mut updated = TimestampMicrosecondBuilder::new();
    let mut error = StringBuilder::new();
    let mut statement = StringBuilder::new();
    for run in runs {
        model.append_value(&run.model);
        version.append_value(run.version as i64);
        status.append_value(run.status);
        let c = run.checkpoint.as_ref();
        completed.append_value(c.map_or(0, |c| i64::from(c.completed)));
        rounds.append_option(c.map(|c| i64::from(c.rounds)));
        clients.append_option(c.map(|c| c.clients.join(", ")));
        database.append_option(c.map(|c| c.database.as_str()));
        started.append_option(c.map(|c| c.started_at_us));
        updated.append_option(c.map(|c| c.updated_at_us));
        error.append_option(c.and_then(|c| c.error.as_deref()));
        statement.append_option(c.map(|c| c.statement.as_str()));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(status.finish()),
        Arc::new(completed.finish()),
        Arc::new(rounds.finish()),
        Arc::new(clients.finish()),
        Arc::new(database.finish()),
        Arc::new(started.finish()),
        Arc::new(updated.finish()),
        Arc::new(error.finish()),
        Arc::new(statement.finish()),
    ];
    Ok(RecordBatch::try_new(training_runs_schema(), columns)?)
}

/// Schema of `fedsql.system.model_features` (what `DESCRIBE MODEL` shows).
pub fn model_features_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("active", DataType::Boolean, false),
        Field::new("position", DataType::Int64, false),
        Field::new("feature", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("encoding", DataType::Utf8, false),
    ]))
}

/// Rows of `fedsql.system.model_features`: each version's input columns in
/// the order `predict` takes them, then its target.
pub fn model_features_batch(versions: &[(ModelVersion, bool)]) -> DfResult<RecordBatch> {
    let mut model = StringBuilder::new();
    let mut version = Int64Builder::new();
    let mut active = BooleanBuilder::new();
    let mut position = Int64Builder::new();
    let mut feature = StringBuilder::new();
    let mut data_type = StringBuilder::new();
    let mut encoding = StringBuilder::new();
    for (m, is_active) in versions {
        let target = (
            m.target.clone(),
            "-".to_string(),
            match &m.task {
                fedsql_udfs::registry::Task::Regression { mean, std } => {
                    format!("target (regression, mean {mean:.4}, std {std:.4})")
                }
                fedsql_udfs::registry::Task::Classification { labels, .. } => {
                    format!("target (classes: {})", labels.join(", "))
                }
            },
        );
        let rows = m
            .transform
            .features
            .iter()
            .map(|f| {
                let enc = match &f.encoding {
                    Encoding::Standardized { mean, std } => {
                        format!("standardized (mean {mean:.4}, std {std:.4})")
                    }
                    Encoding::OneHot { categories } => {
                        format!("one-hot ({})", categories.join(", "))
                    }
                    Encoding::HashedWords { buckets } => {
                        format!("hashed words ({buckets} buckets)")
                    }
                    Encoding::Vector { dims } => format!("vector ({dims} numbers)"),
                    Encoding::Sentence { encoder, dims } => {
                        format!("sentence encoder {encoder} ({dims} dims, frozen; head trained)")
                    }
                };
                (f.name.clone(), f.data_type.clone(), enc)
            })
            .chain(std::iter::once(target));
        for (i, (name, t, enc)) in rows.enumerate() {
            model.append_value(&m.model);
            version.append_value(m.version as i64);
            active.append_value(*is_active);
            position.append_value(i as i64 + 1);
            feature.append_value(name);
            data_type.append_value(t);
            encoding.append_value(enc);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(active.finish()),
        Arc::new(position.finish()),
        Arc::new(feature.finish()),
        Arc::new(data_type.finish()),
        Arc::new(encoding.finish()),
    ];
    Ok(RecordBatch::try_new(model_features_schema(), columns)?)
}
