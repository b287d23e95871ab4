//! A dbt-style project on disk: `fedsql_project.toml`, `models/**/*.sql`,
//! `models/**/schema.yml` (tests and sources, in dbt's format) and
//! `seeds/*.csv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ProjectError;

/// `fedsql_project.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// The project's name (manifest ids are `model.<name>.<model>`).
    pub name: String,
    /// The database (catalog) models are built in [default: the server's
    /// default database].
    pub database: Option<String>,
    /// The schema models and seeds are built in [default: `public`].
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The materialization of models that set none [default: `view`].
    #[serde(default = "default_materialized")]
    pub materialized: String,
    /// `var('name')` values (`--vars` overrides them).
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    /// Models run at once when the graph allows [default: 4].
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_schema() -> String {
    "public".into()
}

fn default_materialized() -> String {
    "view".into()
}

fn default_threads() -> usize {
    4
}

/// One `models/**/*.sql` file.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// The file name without `.sql`: what `ref()` names.
    pub name: String,
    /// Relative to the project (`models/marts/x.sql`).
    pub path: PathBuf,
    pub raw: String,
}

/// One `seeds/*.csv` file.
#[derive(Debug, Clone)]
pub struct SeedFile {
    pub name: String,
    pub path: PathBuf,
}

/// A column test of `schema.yml`.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnTest {
    NotNull,
    Unique,
    AcceptedValues(Vec<String>),
    /// `to` is a `ref('x')` / `source('s', 't')` expression, `field` the
    /// column it must match.
    Relationships {
        to: String,
        field: String,
    },
}

impl ColumnTest {
    /// The test's name as dbt names it.
    pub fn kind(&self) -> &'static str {
        match self {
            ColumnTest::NotNull => "not_null",
            ColumnTest::Unique => "unique",
            ColumnTest::AcceptedValues(_) => "accepted_values",
            ColumnTest::Relationships { .. } => "relationships",
        }
    }
}

/// A test of one model's column, from `schema.yml`.
#[derive(Debug, Clone)]
pub struct SchemaTest {
    pub model: String,
    pub column: String,
    pub test: ColumnTest,
    /// The `schema.yml` it came from.
    pub path: PathBuf,
}

/// A `sources:` table: `source(name, table)` resolves to
/// `database.schema.table`.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub database: String,
    pub schema: String,
}

/// Everything the project holds.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub file: ProjectFile,
    pub models: Vec<ModelFile>,
    pub seeds: Vec<SeedFile>,
    pub tests: Vec<SchemaTest>,
    /// By source name, then table.
    pub sources: BTreeMap<String, BTreeMap<String, SourceTable>>,
}

// The parts of dbt's schema.yml fedsql reads; other keys are ignored.
#[derive(Deserialize, Default)]
struct SchemaYml {
    #[serde(default)]
    models: Vec<ModelYml>,
    #[serde(default)]
    sources: Vec<SourceYml>,
}

#[derive(Deserialize)]
struct ModelYml {
    name: String,
    #[serde(default)]
    columns: Vec<ColumnYml>,
}

#[derive(Deserialize)]
struct ColumnYml {
    name: String,
    #[serde(default, alias = "data_tests")]
    tests: Vec<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct SourceYml {
    name: String,
    database: Option<String>,
    schema: Option<String>,
    #[serde(default)]
    tables: Vec<SourceTableYml>,
}

#[derive(Deserialize)]
struct SourceTableYml {
    name: String,
}

impl Project {
    /// Reads the project in `dir`.
    pub fn load(dir: &Path) -> Result<Project, ProjectError> {
        let toml_path = dir.join("fedsql_project.toml");
        let text = std::fs::read_to_string(&toml_path)
            .map_err(|e| ProjectError::Io(toml_path.clone(), e))?;
        let file: ProjectFile = toml::from_str(&text)
            .map_err(|e| ProjectError::Invalid(toml_path.clone(), e.to_string()))?;
        let mut models = Vec::new();
        let mut yml = Vec::new();
        walk(
            &dir.join("models"),
            &mut |path| match path.extension().and_then(|e| e.to_str()) {
                Some("sql") => models.push(path.to_path_buf()),
                Some("yml") | Some("yaml") => yml.push(path.to_path_buf()),
                _ => {}
            },
        )?;
        models.sort();
        yml.sort();
        let relative = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_path_buf();
        let mut model_files: Vec<ModelFile> = Vec::new();
        for path in models {
            let raw =
                std::fs::read_to_string(&path).map_err(|e| ProjectError::Io(path.clone(), e))?;
            let name = stem(&path);
            if let Some(other) = model_files.iter().find(|m| m.name == name) {
                return Err(ProjectError::Invalid(
                    relative(&path),
                    format!(
                        "a second model named {name} (the first is {})",
                        other.path.display()
                    ),
                ));
            }
            model_files.push(ModelFile {
                name,
                path: relative(&path),
                raw,
            });
        }
        let mut seeds = Vec::new();
        walk(&dir.join("seeds"), &mut |path| {
            if path.extension().and_then(|e| e.to_str()) == Some("csv") {
                seeds.push(SeedFile {
                    name: stem(path),
                    path: path.to_path_buf(),
                });
            }
        })?;
        seeds.sort_by(|a, b| a.name.cmp(&b.name));

        let mut tests = Vec::new();
        let mut sources: BTreeMap<String, BTreeMap<String, SourceTable>> = BTreeMap::new();
        for path in yml {
            let text =
                std::fs::read_to_string(&path).map_err(|e| ProjectError::Io(path.clone(), e))?;
            let parsed: SchemaYml = serde_yaml_ng::from_str(&text)
                .map_err(|e| ProjectError::Invalid(relative(&path), e.to_string()))?;
            for model in parsed.models {
                for column in model.columns {
                    for test in &column.tests {
                        tests.push(SchemaTest {
                            model: model.name.clone(),
                            column: column.name.clone(),
                            test: column_test(test)
                                .map_err(|e| ProjectError::Invalid(relative(&path), e))?,
                            path: relative(&path),
                        });
                    }
                }
            }
            for source in parsed.sources {
                let entry = sources.entry(source.name.clone()).or_default();
                for table in source.tables {
                    entry.insert(
                        table.name,
                        SourceTable {
                            // In fedsql a source is a database (catalog).
                            database: source
                                .database
                                .clone()
                                .unwrap_or_else(|| source.name.clone()),
                            schema: source.schema.clone().unwrap_or_else(|| "public".into()),
                        },
                    );
                }
            }
        }
        Ok(Project {
            dir: dir.to_path_buf(),
            file,
            models: model_files,
            seeds,
            tests,
            sources,
        })
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Calls `visit` for every file under `dir` (none if it does not exist).
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) -> Result<(), ProjectError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry
            .map_err(|e| ProjectError::Io(dir.to_path_buf(), e))?
            .path();
        if path.is_dir() {
            walk(&path, visit)?;
        } else {
            visit(&path);
        }
    }
    Ok(())
}

/// One entry of a column's `tests:` list: a name, or a one-key map with
/// its arguments (directly or under `arguments:`, dbt 1.10's form).
fn column_test(value: &serde_yaml_ng::Value) -> Result<ColumnTest, String> {
    use serde_yaml_ng::Value;
    let (name, args) = match value {
        Value::String(name) => (name.as_str(), None),
        Value::Mapping(map) if map.len() == 1 => {
            let (k, v) = map.iter().next().ok_or("an empty test")?;
            let name = k.as_str().ok_or("a test name must be a string")?;
            let args = v.get("arguments").unwrap_or(v);
            (name, Some(args))
        }
        other => return Err(format!("cannot read the test {other:?}")),
    };
    let text = |key: &str| -> Result<String, String> {
        args.and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{name} needs {key}"))
    };
    match name {
        "not_null" => Ok(ColumnTest::NotNull),
        "unique" => Ok(ColumnTest::Unique),
        "accepted_values" => {
            let values = args
                .and_then(|a| a.get("values"))
                .and_then(|v| v.as_sequence())
                .ok_or("accepted_values needs values")?;
            Ok(ColumnTest::AcceptedValues(
                values
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    })
                    .collect(),
            ))
        }
        "relationships" => Ok(ColumnTest::Relationships {
            to: text("to")?,
            field: text("field")?,
        }),
        other => Err(format!(
            "unknown test {other} (fedsql runs not_null, unique, accepted_values, relationships)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_read_in_both_of_dbts_forms() {
        let yml: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "- not_null\n- accepted_values:\n    values: [a, 1]\n- accepted_values:\n    arguments:\n      values: [b]\n- relationships:\n    to: ref('x')\n    field: id\n",
        )
        .unwrap();
        let tests: Vec<ColumnTest> = yml
            .as_sequence()
            .unwrap()
            .iter()
            .map(|t| column_test(t).unwrap())
            .collect();
        assert_eq!(
            tests,
            vec![
                ColumnTest::NotNull,
                ColumnTest::AcceptedValues(vec!["a".into(), "1".into()]),
                ColumnTest::AcceptedValues(vec!["b".into()]),
                ColumnTest::Relationships {
                    to: "ref('x')".into(),
                    field: "id".into()
                },
            ]
        );
        let err = column_test(&serde_yaml_ng::Value::String("dbt_utils.x".into())).unwrap_err();
        assert!(err.contains("unknown test dbt_utils.x"), "{err}");
    }
}
