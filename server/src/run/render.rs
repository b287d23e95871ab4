//! Rendering a model's Jinja with dbt's functions: `ref`, `source`,
//! `config`, `var`, `this` and `is_incremental()`.
//!
//! A model is rendered twice. The first pass ([`Pass::Parse`]) only
//! records what the model refers to and how it is configured, so the graph
//! can be built; the second ([`Pass::Run`]) renders the SQL that runs, with
//! every `ref` resolved to the relation built for it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Object, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

use super::project::SourceTable;

/// A relation as a template sees it: `{{ ref('x') }}` renders as its quoted
/// name, and `.database` / `.schema` / `.identifier` read its parts (as
/// dbt's `Relation` does).
#[derive(Debug, Clone)]
pub struct Relation {
    pub database: String,
    pub schema: String,
    pub identifier: String,
    /// What `{{ … }}` prints: the quoted three-part name, an ephemeral
    /// model's SQL as a derived table, or a federated model's name.
    pub rendered: String,
}

/// `"a"."b"."c"`, each part quoted as a SQL identifier.
pub fn quoted(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

impl Relation {
    /// A table or view.
    pub fn table(database: &str, schema: &str, identifier: &str) -> Relation {
        Relation {
            database: database.into(),
            schema: schema.into(),
            identifier: identifier.into(),
            rendered: quoted(&[database, schema, identifier]),
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rendered)
    }
}

impl Object for Relation {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "database" => Some(Value::from(self.database.clone())),
            "schema" => Some(Value::from(self.schema.clone())),
            "identifier" | "name" => Some(Value::from(self.identifier.clone())),
            _ => None,
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rendered)
    }
}

/// What a model's template asked for.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// `ref()` names, in order.
    pub refs: Vec<String>,
    /// `config()` keyword arguments.
    pub config: BTreeMap<String, Value>,
}

/// Which rendering this is.
pub enum Pass<'a> {
    /// Records refs and config; refs render as placeholders.
    Parse,
    /// Refs resolve through `resolve`; `is_incremental()` answers
    /// `incremental`.
    Run {
        resolve: &'a (dyn Fn(&str) -> Option<Relation> + Sync),
        incremental: bool,
    },
}

/// What every render of a project shares.
pub struct Templates<'a> {
    pub vars: &'a BTreeMap<String, serde_json::Value>,
    pub sources: &'a BTreeMap<String, BTreeMap<String, SourceTable>>,
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

impl Templates<'_> {
    /// Renders `raw` as the model `this`.
    pub fn render(
        &self,
        raw: &str,
        this: &Relation,
        pass: Pass<'_>,
    ) -> Result<(String, Captured), Error> {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);

        let record = Arc::clone(&captured);
        env.add_function("config", move |kwargs: Kwargs| -> Result<String, Error> {
            let mut captured = record.lock().unwrap_or_else(|p| p.into_inner());
            for key in kwargs.args() {
                let value: Value = kwargs.get(key)?;
                captured.config.insert(key.to_string(), value);
            }
            Ok(String::new())
        });

        let vars = self.vars.clone();
        env.add_function(
            "var",
            move |name: String, default: Option<Value>| -> Result<Value, Error> {
                match (vars.get(&name), default) {
                    (Some(v), _) => Ok(Value::from_serialize(v)),
                    (None, Some(d)) => Ok(d),
                    (None, None) => Err(invalid(format!(
                        "var('{name}') is not set (fedsql_project.toml [vars] or --vars) and has no default"
                    ))),
                }
            },
        );

        let sources = self.sources.clone();
        env.add_function(
            "source",
            move |source: String, table: String| -> Result<Value, Error> {
                let known = sources.get(&source).and_then(|t| t.get(&table));
                match known {
                    Some(t) => Ok(Value::from_object(Relation::table(&t.database, &t.schema, &table))),
                    None => Err(invalid(format!(
                        "source('{source}', '{table}') is not declared in a schema.yml sources: entry"
                    ))),
                }
            },
        );

        // Run-pass refs are resolved before rendering (a parse pass finds
        // them): the template's functions must own what they answer with.
        let (resolved, incremental) = match &pass {
            Pass::Parse => (None, false),
            Pass::Run {
                resolve,
                incremental,
            } => {
                let (_, parsed) = self.render(raw, this, Pass::Parse)?;
                let resolved: BTreeMap<String, Relation> = parsed
                    .refs
                    .iter()
                    .filter_map(|name| resolve(name).map(|r| (name.clone(), r)))
                    .collect();
                (Some(resolved), *incremental)
            }
        };
        let record = Arc::clone(&captured);
        env.add_function("ref", move |name: String| -> Result<Value, Error> {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .refs
                .push(name.clone());
            match &resolved {
                None => Ok(Value::from_object(Relation::table("", "", &name))),
                Some(resolved) => resolved
                    .get(&name)
                    .cloned()
                    .map(Value::from_object)
                    .ok_or_else(|| {
                        invalid(format!("ref('{name}'): no model or seed is named {name}"))
                    }),
            }
        });
        env.add_function("is_incremental", move || incremental);

        let this = Value::from_object(this.clone());
        let sql = env.render_str(raw, minijinja::context! { this => this })?;
        let captured = captured.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok((
            sql.trim().trim_end_matches(';').trim().to_string(),
            captured,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_config_vars_and_this_render_as_dbt_does() {
        let vars = BTreeMap::from([("min".to_string(), serde_json::json!(5))]);
        let sources = BTreeMap::from([(
            "pg".to_string(),
            BTreeMap::from([(
                "transactions".to_string(),
                SourceTable {
                    database: "pg".into(),
                    schema: "bank".into(),
                },
            )]),
        )]);
        let templates = Templates {
            vars: &vars,
            sources: &sources,
        };
        let raw = "{{ config(materialized='table', unique_key='id') }}\n\
                   SELECT * FROM {{ ref('a') }} JOIN {{ source('pg', 'transactions') }} t \
                   WHERE n > {{ var('min') }} AND m < {{ var('max', 9) }} \
                   AND '{{ ref('fraud').identifier }}' <> '{{ this.identifier }}'\
                   {% if is_incremental() %} AND late{% endif %};";
        let this = Relation::table("demo", "marts", "b");
        let (_, parsed) = templates.render(raw, &this, Pass::Parse).unwrap();
        assert_eq!(parsed.refs, ["a", "fraud"]);
        assert_eq!(
            parsed
                .config
                .get("materialized")
                .and_then(|v| v.as_str().map(String::from)),
            Some("table".to_string())
        );
        let resolve = |name: &str| -> Option<Relation> {
            Some(match name {
                "fraud" => Relation {
                    rendered: "fraud".into(),
                    ..Relation::table("demo", "marts", "fraud")
                },
                other => Relation::table("demo", "marts", other),
            })
        };
        let (sql, _) = templates
            .render(
                raw,
                &this,
                Pass::Run {
                    resolve: &resolve,
                    incremental: true,
                },
            )
            .unwrap();
        assert_eq!(
            sql,
            "SELECT * FROM \"demo\".\"marts\".\"a\" JOIN \"pg\".\"bank\".\"transactions\" t \
             WHERE n > 5 AND m < 9 AND 'fraud' <> 'b' AND late"
        );
        let missing = templates
            .render("{{ source('pg', 'nope') }}", &this, Pass::Parse)
            .unwrap_err();
        assert!(missing.to_string().contains("not declared"), "{missing}");
        let unset = templates
            .render("{{ var('x') }}", &this, Pass::Parse)
            .unwrap_err();
        assert!(unset.to_string().contains("var('x') is not set"), "{unset}");
    }
}
