//! `target/manifest.json` and `target/run_results.json`, in the shape of
//! dbt's (the fields its tooling reads: nodes with their dependencies,
//! config, code and relation; results with status, timing and message).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::graph::Graph;
use super::project::Project;
use super::{ProjectError, RunContext, RunSummary};

fn now_rfc3339() -> String {
    let micros = fedsql_udfs::checkpoint::now_us();
    datafusion::arrow::temporal_conversions::timestamp_us_to_datetime(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

/// Writes both files under `<project>/target/`.
pub(super) fn write(
    project: &Project,
    ctx: &RunContext,
    graph: &Graph,
    compiled: &BTreeMap<String, String>,
    summary: &RunSummary,
    elapsed: f64,
) -> Result<(), ProjectError> {
    let target = project.dir.join("target");
    std::fs::create_dir_all(&target).map_err(|e| ProjectError::Io(target.clone(), e))?;
    let generated_at = now_rfc3339();
    let invocation_id = crate::flight::random_hex(16);
    let metadata = |schema: &str| {
        json!({
            "dbt_schema_version": format!("https://schemas.getdbt.com/dbt/{schema}"),
            "dbt_version": format!("fedsql-{}", env!("CARGO_PKG_VERSION")),
            "generated_at": generated_at,
            "invocation_id": invocation_id,
        })
    };

    let mut nodes = serde_json::Map::new();
    for (name, node) in &graph.nodes {
        let planned = &ctx.planned[name];
        let unique_id = ctx.unique_id(name);
        let depends: Vec<String> = node.refs.iter().map(|r| ctx.unique_id(r)).collect();
        nodes.insert(
            unique_id.clone(),
            json!({
                "unique_id": unique_id,
                "resource_type": if node.seed { "seed" } else { "model" },
                "name": name,
                "package_name": project.file.name,
                "path": node.path,
                "original_file_path": node.path,
                "fqn": [project.file.name.clone(), name.clone()],
                "database": planned.relation.database,
                "schema": planned.relation.schema,
                "alias": name,
                "relation_name": planned.relation.to_string(),
                "tags": node.tags,
                "config": {
                    "materialized": planned.materialized.name(),
                    "unique_key": planned.unique_key,
                    "tags": node.tags,
                    "enabled": true,
                },
                "depends_on": { "nodes": depends, "macros": [] },
                "raw_code": planned.raw,
                "compiled_code": compiled.get(name),
                "language": "sql",
            }),
        );
    }
    for test in &project.tests {
        let unique_id = format!(
            "test.{}.{}_{}_{}",
            project.file.name,
            test.test.kind(),
            test.model,
            test.column
        );
        nodes.insert(
            unique_id.clone(),
            json!({
                "unique_id": unique_id,
                "resource_type": "test",
                "name": format!("{}_{}_{}", test.test.kind(), test.model, test.column),
                "package_name": project.file.name,
                "original_file_path": test.path,
                "column_name": test.column,
                "test_metadata": { "name": test.test.kind() },
                "depends_on": { "nodes": [ctx.unique_id(&test.model)], "macros": [] },
            }),
        );
    }
    let manifest = json!({
        "metadata": metadata("manifest/v12.json"),
        "nodes": Value::Object(nodes),
        "sources": {},
    });

    let results: Vec<Value> = summary
        .results
        .iter()
        .map(|r| {
            json!({
                "unique_id": r.unique_id,
                "status": r.status,
                "message": r.message,
                "failures": r.failures,
                "execution_time": r.seconds,
                "thread_id": "Thread-1",
                "timing": [],
                "adapter_response": {},
                "compiled_code": r.compiled,
            })
        })
        .collect();
    let run_results = json!({
        "metadata": metadata("run-results/v6.json"),
        "results": results,
        "elapsed_time": elapsed,
        "args": { "which": "run", "project_dir": project.dir },
    });
    for (file, value) in [
        ("manifest.json", manifest),
        ("run_results.json", run_results),
    ] {
        let path = target.join(file);
        let text = serde_json::to_vec_pretty(&value)
            .map_err(|e| ProjectError::Invalid(path.clone(), e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| ProjectError::Io(path.clone(), e))?;
    }
    Ok(())
}
