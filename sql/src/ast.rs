//! Typed syntax trees for fedsql's own statements (SPEC sections 4, 5 and 6).
//!
//! Everything that is not one of these statements is standard SQL and goes to
//! DataFusion unchanged; see [`crate::Statement`].

use std::fmt;

/// A statement that only fedsql understands.
#[derive(Debug, Clone, PartialEq)]
pub enum FedsqlStatement {
    /// `CREATE SOURCE [IF NOT EXISTS] name TYPE kind OPTIONS (key 'value', …)`
    CreateSource(CreateSource),
    /// `DROP SOURCE [IF EXISTS] name`
    DropSource { name: String, if_exists: bool },
    /// `SHOW SOURCES`
    ShowSources,
    /// `CREATE SITE [IF NOT EXISTS] name OPTIONS (token_env 'VAR')`: a site
    /// that may connect to this coordinator with the token held in `VAR`.
    CreateSite {
        name: String,
        if_not_exists: bool,
        options: Vec<(String, OptionValue)>,
    },
    /// `DROP SITE [IF EXISTS] name`
    DropSite { name: String, if_exists: bool },
    /// `REFRESH SOURCE name`: discover the source's tables again.
    RefreshSource { name: String },
    /// `TRAIN MODEL …` or its synonym `CREATE [OR REPLACE] MODEL …`
    TrainModel(TrainModel),
    /// `EVALUATE MODEL name [VERSION n] ON ( query ) [FEDERATED BY column | FEDERATED ON SITES (…)]`
    EvaluateModel(EvaluateModel),
    /// `SHOW MODELS`
    ShowModels,
    /// `DESCRIBE MODEL name`
    DescribeModel { name: String },
    /// `SHOW VERSIONS IN MODEL name`
    ShowVersions { model: String },
    /// `ALTER MODEL name SET ACTIVE VERSION n`
    AlterModelSetActiveVersion { name: String, version: u64 },
    /// `ALTER TABLE|VIEW [IF EXISTS] name RENAME TO new_name` (what dbt
    /// swaps a rebuilt model in with). `name` keeps its parts as written
    /// (catalog, schema, table; lower-cased unless quoted).
    RenameRelation {
        kind: RelationKind,
        if_exists: bool,
        name: Vec<String>,
        new_name: String,
    },
    /// `TRUNCATE [TABLE] name [, …]` on fedsql-owned tables (dbt re-seeds
    /// with it). Each name keeps its parts as written.
    Truncate { names: Vec<Vec<String>> },
    /// `CREATE [OR REPLACE] ENCODER [IF NOT EXISTS] name FROM '/path'`: a
    /// pretrained sentence encoder (a sentence-transformers directory)
    /// that `embed()` and text classifiers use by name.
    CreateEncoder {
        name: String,
        path: String,
        if_not_exists: bool,
        or_replace: bool,
    },
    /// `DROP ENCODER [IF EXISTS] name`
    DropEncoder { name: String, if_exists: bool },
    /// `RESUME TRAINING name`: continue an interrupted `TRAIN MODEL` of
    /// `name` from its last completed round.
    ResumeTraining { name: String },
    /// `DROP MODEL [IF EXISTS] name [VERSION n]`
    DropModel {
        name: String,
        if_exists: bool,
        version: Option<u64>,
    },
}

impl FedsqlStatement {
    /// The statement's name as users write it, for messages such as
    /// "TRAIN MODEL is not available yet".
    pub fn kind(&self) -> &'static str {
        match self {
            FedsqlStatement::CreateSource(_) => "CREATE SOURCE",
            FedsqlStatement::DropSource { .. } => "DROP SOURCE",
            FedsqlStatement::ShowSources => "SHOW SOURCES",
            FedsqlStatement::CreateSite { .. } => "CREATE SITE",
            FedsqlStatement::DropSite { .. } => "DROP SITE",
            FedsqlStatement::RefreshSource { .. } => "REFRESH SOURCE",
            FedsqlStatement::TrainModel(_) => "TRAIN MODEL",
            FedsqlStatement::EvaluateModel(_) => "EVALUATE MODEL",
            FedsqlStatement::ShowModels => "SHOW MODELS",
            FedsqlStatement::DescribeModel { .. } => "DESCRIBE MODEL",
            FedsqlStatement::ShowVersions { .. } => "SHOW VERSIONS",
            FedsqlStatement::AlterModelSetActiveVersion { .. } => "ALTER MODEL",
            FedsqlStatement::DropModel { .. } => "DROP MODEL",
            FedsqlStatement::ResumeTraining { .. } => "RESUME TRAINING",
            FedsqlStatement::CreateEncoder { .. } => "CREATE ENCODER",
            FedsqlStatement::DropEncoder { .. } => "DROP ENCODER",
            FedsqlStatement::Truncate { .. } => "TRUNCATE TABLE",
            FedsqlStatement::RenameRelation {
                kind: RelationKind::Table,
                ..
            } => "ALTER TABLE",
            FedsqlStatement::RenameRelation {
                kind: RelationKind::View,
                ..
            } => "ALTER VIEW",
        }
    }

    /// Whether the statement only reads: it is answered by a query and may be
    /// planned ahead (prepared, described) without changing anything.
    /// (`EVALUATE MODEL` computes its answer when planned.)
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            FedsqlStatement::ShowSources
                | FedsqlStatement::EvaluateModel(_)
                | FedsqlStatement::ShowModels
                | FedsqlStatement::DescribeModel { .. }
                | FedsqlStatement::ShowVersions { .. }
        )
    }
}

/// Which kind of relation an `ALTER … RENAME` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    View,
}

/// `CREATE SOURCE`: a new catalog backed by an external system.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSource {
    pub name: String,
    pub if_not_exists: bool,
    pub kind: SourceKind,
    /// Options in the order written; keys are lower-cased.
    pub options: Vec<(String, OptionValue)>,
}

/// The kinds of source fedsql can federate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Postgres,
    Odbc,
    Kafka,
    FlightSql,
}

impl SourceKind {
    /// Parses the word after `TYPE`, case-insensitively.
    pub fn from_word(word: &str) -> Option<SourceKind> {
        match word.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(SourceKind::Postgres),
            "odbc" => Some(SourceKind::Odbc),
            "kafka" => Some(SourceKind::Kafka),
            "flightsql" | "flight_sql" => Some(SourceKind::FlightSql),
            _ => None,
        }
    }

    /// The canonical lower-case name, as shown by `SHOW SOURCES`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Postgres => "postgres",
            SourceKind::Odbc => "odbc",
            SourceKind::Kafka => "kafka",
            SourceKind::FlightSql => "flightsql",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A literal option value in `OPTIONS (…)` or `WITH (…)`.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    String(String),
    /// Numbers keep their text so `0.1` is not rounded through f64 here.
    Number(String),
    Boolean(bool),
    /// A bare word such as `fedavg` or `relu`.
    Word(String),
}

impl OptionValue {
    /// The value as text, whatever its literal kind.
    pub fn as_text(&self) -> String {
        match self {
            OptionValue::String(s) | OptionValue::Number(s) | OptionValue::Word(s) => s.clone(),
            OptionValue::Boolean(b) => b.to_string(),
        }
    }
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            OptionValue::Number(s) | OptionValue::Word(s) => f.write_str(s),
            OptionValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// How an existing model of the same name is treated by `TRAIN MODEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingModel {
    /// Plain `TRAIN MODEL`: add a new version.
    NewVersion,
    /// `IF NOT EXISTS`: do nothing if the model exists.
    IfNotExists,
    /// `OR REPLACE`: drop all versions first.
    Replace,
}

/// `TRAIN MODEL` / `CREATE MODEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainModel {
    pub name: String,
    pub existing: ExistingModel,
    /// `linear_regression`, `logistic_regression` or `mlp`, lower-cased.
    pub algorithm: String,
    /// `mlp(hidden_units = '64,32', activation = 'relu')` parameters.
    pub algorithm_params: Vec<(String, OptionValue)>,
    pub target: String,
    pub input: TrainingInput,
    pub federation: Federation,
    /// `WITH (…)` options, keys lower-cased, in the order written.
    pub options: Vec<(String, OptionValue)>,
}

/// `"name"`: an identifier quoted so it parses back exactly as it is.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `(key = value, …)` with the keys quoted, so any key parses back.
fn write_options(f: &mut fmt::Formatter<'_>, options: &[(String, OptionValue)]) -> fmt::Result {
    f.write_str("(")?;
    for (i, (key, value)) in options.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "'{}' = {value}", key.replace('\'', "''"))?;
    }
    f.write_str(")")
}

/// The statement as SQL that parses back to an equal `TrainModel` (names
/// quoted, options in their order); a training checkpoint keeps it so the
/// run can be planned again after a restart.
impl fmt::Display for TrainModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TRAIN MODEL ")?;
        match self.existing {
            ExistingModel::NewVersion => {}
            ExistingModel::IfNotExists => f.write_str("IF NOT EXISTS ")?,
            ExistingModel::Replace => f.write_str("OR REPLACE ")?,
        }
        write!(
            f,
            "{} USING {}",
            quoted(&self.name),
            quoted(&self.algorithm)
        )?;
        if !self.algorithm_params.is_empty() {
            write_options(f, &self.algorithm_params)?;
        }
        write!(f, " PREDICT {} FROM ", quoted(&self.target))?;
        match &self.input {
            TrainingInput::Query(q) => write!(f, "({q})")?,
            TrainingInput::Table(t) => f.write_str(t)?,
        }
        match &self.federation {
            Federation::ByColumn(c) => write!(f, " FEDERATED BY {}", quoted(c))?,
            Federation::OnSites(sites) => {
                let sites: Vec<String> = sites
                    .iter()
                    .map(|s| OptionValue::String(s.clone()).to_string())
                    .collect();
                write!(f, " FEDERATED ON SITES ({})", sites.join(", "))?;
            }
        }
        if !self.options.is_empty() {
            f.write_str(" WITH ")?;
            write_options(f, &self.options)?;
        }
        Ok(())
    }
}

/// The rows a model is trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingInput {
    /// `FROM ( query )`: the query's exact text.
    Query(String),
    /// `FROM source.schema.table`
    Table(String),
}

impl TrainingInput {
    /// A query that returns the training rows.
    pub fn to_sql(&self) -> String {
        match self {
            TrainingInput::Query(q) => q.clone(),
            TrainingInput::Table(t) => format!("SELECT * FROM {t}"),
        }
    }
}

/// Who the federated clients are.
#[derive(Debug, Clone, PartialEq)]
pub enum Federation {
    /// `FEDERATED BY column`: each distinct value is one client.
    ByColumn(String),
    /// `FEDERATED ON SITES ('eu', 'us')`: each site is one client.
    OnSites(Vec<String>),
}

/// `EVALUATE MODEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluateModel {
    pub name: String,
    pub version: Option<u64>,
    pub query: String,
    /// `FEDERATED BY column` or `FEDERATED ON SITES (…)`; none scores all
    /// rows as one client.
    pub federation: Option<Federation>,
}
