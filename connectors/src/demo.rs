//! The embedded demo catalog `demo`: a retail bank in three regions.
//!
//! Generated deterministically (fixed seeds) on first start and stored as
//! Parquet under `<data dir>/demo/`, then served as DataFusion listing tables.
//! The regions differ in distribution (non-IID), which is what makes federated
//! training on them interesting.
//!
//! # The hidden fraud rule
//! `transactions.is_fraud` is drawn as Bernoulli(p) with
//!
//! ```text
//! z = -6.6 + 0.85·ln(amount) + 1.7·[channel = 'online'] + 0.9·[channel = 'mobile']
//!          + 1.5·[merchant_category IN ('electronics', 'travel')]
//!          + 1.8·[hour(ts) < 5] − 0.008·(credit_score − 650)
//! p = 1 / (1 + e^(−z))
//! ```
//!
//! `credit_score` comes from `customers`, so the best model needs the join.
//! Because labels are drawn from p, no model can beat the Bayes accuracy
//! mean(max(p, 1 − p)); it is computed for the generated rows and written to
//! `manifest.json` next to the Parquet files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::ConnectorError;

/// The name of the demo catalog.
pub const DEMO_CATALOG: &str = "demo";
/// The schema holding the bank tables.
pub const DEMO_SCHEMA: &str = "bank";
/// Bumped whenever the generator changes, so old files are regenerated.
const GENERATOR_VERSION: u32 = 1;

const REGIONS: [&str; 3] = ["eu", "us", "apac"];
const CHANNELS: [&str; 4] = ["pos", "online", "mobile", "atm"];
const CATEGORIES: [&str; 7] = [
    "grocery",
    "restaurants",
    "fuel",
    "fashion",
    "online_services",
    "electronics",
    "travel",
];
/// Intents of the support messages.
pub const INTENTS: [&str; 5] = ["balance", "transfer", "card_lost", "fraud_report", "loan"];

/// What was generated, stored as `manifest.json` after the Parquet files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DemoManifest {
    pub generator_version: u32,
    pub scale: f64,
    pub customers: usize,
    pub transactions: usize,
    pub support_messages: usize,
    /// Share of transactions with `is_fraud = true`.
    pub fraud_rate: f64,
    /// Expected accuracy of the Bayes-optimal classifier, mean(max(p, 1 − p)).
    pub bayes_accuracy: f64,
    /// Accuracy of always answering the majority class.
    pub majority_accuracy: f64,
}

/// Opens the demo catalog under `data_dir`, generating it first if needed.
///
/// Generation writes into a temporary folder and renames it into place, so an
/// interrupted first start never leaves half-written tables behind.
pub fn open_demo_catalog(
    data_dir: &Path,
    scale: f64,
) -> Result<(Arc<dyn CatalogProvider>, DemoManifest), ConnectorError> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(ConnectorError::InvalidOption {
            option: "demo_scale".into(),
            message: format!("must be a positive number, got {scale}"),
        });
    }
    let dir = data_dir.join("demo").join(format!("scale-{scale}"));
    let manifest = match read_manifest(&dir) {
        Some(m) if m.generator_version == GENERATOR_VERSION => m,
        _ => generate(&dir, scale)?,
    };

    let schema = Arc::new(MemorySchemaProvider::new());
    for (name, table_schema) in [
        ("customers", customers_schema()),
        ("transactions", transactions_schema()),
        ("support_messages", support_messages_schema()),
    ] {
        let table = parquet_table(&dir.join(format!("{name}.parquet")), table_schema)?;
        schema.register_table(name.to_string(), table)?;
    }
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema(DEMO_SCHEMA, schema)?;
    // `public` exists in every catalog so CREATE VIEW without a schema works.
    catalog.register_schema("public", Arc::new(MemorySchemaProvider::new()))?;
    Ok((catalog, manifest))
}

fn read_manifest(dir: &Path) -> Option<DemoManifest> {
    let text = fs::read_to_string(dir.join("manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn parquet_table(path: &Path, schema: SchemaRef) -> Result<Arc<dyn TableProvider>, ConnectorError> {
    let url = ListingTableUrl::parse(path.to_string_lossy())?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// Schema of `demo.bank.customers`.
pub fn customers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("age", DataType::Int32, false),
        Field::new("income", DataType::Float64, false),
        Field::new("tenure_months", DataType::Int32, false),
        Field::new("credit_score", DataType::Int32, false),
        Field::new("segment", DataType::Utf8, false),
    ]))
}

/// Schema of `demo.bank.transactions`.
pub fn transactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tx_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("amount", DataType::Float64, false),
        Field::new("merchant_category", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("is_fraud", DataType::Boolean, false),
    ]))
}

/// Schema of `demo.bank.support_messages`.
pub fn support_messages_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("message_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("intent", DataType::Utf8, false),
    ]))
}

struct Customer {
    region: usize,
    credit_score: i32,
}

fn generate(dir: &Path, scale: f64) -> Result<DemoManifest, ConnectorError> {
    let n_customers = ((20_000.0 * scale).round() as usize).max(30);
    let n_transactions = n_customers * 10;
    let n_messages = n_customers / 2;
    tracing::info!(
        customers = n_customers,
        transactions = n_transactions,
        "generating the demo catalog"
    );

    let tmp = tmp_dir_for(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;

    let (customers_batch, customers) = generate_customers(n_customers)?;
    write_parquet(&tmp.join("customers.parquet"), &customers_batch)?;
    let (tx_batch, stats) = generate_transactions(n_transactions, &customers)?;
    write_parquet(&tmp.join("transactions.parquet"), &tx_batch)?;
    let msg_batch = generate_support_messages(n_messages, &customers)?;
    write_parquet(&tmp.join("support_messages.parquet"), &msg_batch)?;

    let manifest = DemoManifest {
        generator_version: GENERATOR_VERSION,
        scale,
        customers: n_customers,
        transactions: n_transactions,
        support_messages: n_messages,
        fraud_rate: stats.fraud_rate,
        bayes_accuracy: stats.bayes_accuracy,
        majority_accuracy: stats.fraud_rate.max(1.0 - stats.fraud_rate),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&tmp.join("manifest.json"), &json)?;

    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(&tmp, dir)?;
    Ok(manifest)
}

fn tmp_dir_for(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dir.with_file_name(name)
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), ConnectorError> {
    let file = fs::File::create(path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(batch)?;
    let file = writer.into_inner()?;
    file.sync_all()?;
    Ok(())
}

/// Standard normal draw (Box–Muller); keeps the generator free of extra crates.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Index drawn with the given weights (which sum to 1).
fn pick(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let mut u: f64 = rng.random();
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

fn generate_customers(n: usize) -> Result<(RecordBatch, Vec<Customer>), ConnectorError> {
    let mut rng = ChaCha8Rng::seed_from_u64(0xC057);
    let mut id = Int64Builder::with_capacity(n);
    let mut region = StringBuilder::new();
    let mut age = Int32Builder::with_capacity(n);
    let mut income = Float64Builder::with_capacity(n);
    let mut tenure = Int32Builder::with_capacity(n);
    let mut credit = Int32Builder::with_capacity(n);
    let mut segment = StringBuilder::new();
    let mut customers = Vec::with_capacity(n);
    for i in 0..n {
        let r = pick(&mut rng, &[0.40, 0.35, 0.25]);
        let (age_mu, age_sd, inc_mu, inc_sd, score_mu) = match r {
            0 => (45.0, 12.0, 10.8, 0.40, 690.0),
            1 => (40.0, 13.0, 11.0, 0.55, 660.0),
            _ => (33.0, 9.0, 10.3, 0.50, 640.0),
        };
        let a = (age_mu + age_sd * normal(&mut rng))
            .clamp(18.0, 90.0)
            .round() as i32;
        let inc = ((inc_mu + inc_sd * normal(&mut rng)).exp() * 100.0).round() / 100.0;
        let t = rng.random_range(1..=((a - 17) * 12).min(360));
        let score = (score_mu + 70.0 * normal(&mut rng) + 25.0 * (inc / 50_000.0).ln())
            .clamp(300.0, 850.0)
            .round() as i32;
        let seg = if inc > 150_000.0 {
            "private"
        } else if inc > 70_000.0 {
            "premium"
        } else {
            "retail"
        };
        id.append_value(i as i64 + 1);
        region.append_value(REGIONS[r]);
        age.append_value(a);
        income.append_value(inc);
        tenure.append_value(t);
        credit.append_value(score);
        segment.append_value(seg);
        customers.push(Customer {
            region: r,
            credit_score: score,
        });
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(region.finish()),
        Arc::new(age.finish()),
        Arc::new(income.finish()),
        Arc::new(tenure.finish()),
        Arc::new(credit.finish()),
        Arc::new(segment.finish()),
    ];
    Ok((
        RecordBatch::try_new(customers_schema(), columns)?,
        customers,
    ))
}

struct FraudStats {
    fraud_rate: f64,
    bayes_accuracy: f64,
}

/// The hidden rule (see the module docs): probability that a transaction is fraud.
fn fraud_probability(amount: f64, channel: usize, category: usize, hour: u32, score: i32) -> f64 {
    let z = -6.6
        + 0.85 * amount.ln()
        + if CHANNELS[channel] == "online" {
            1.7
        } else {
            0.0
        }
        + if CHANNELS[channel] == "mobile" {
            0.9
        } else {
            0.0
        }
        + if matches!(CATEGORIES[category], "electronics" | "travel") {
            1.5
        } else {
            0.0
        }
        + if hour < 5 { 1.8 } else { 0.0 }
        - 0.008 * f64::from(score - 650);
    1.0 / (1.0 + (-z).exp())
}

fn generate_transactions(
    n: usize,
    customers: &[Customer],
) -> Result<(RecordBatch, FraudStats), ConnectorError> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7A5);
    // 2025-01-01T00:00:00 in microseconds since the epoch.
    const START_US: i64 = 1_735_689_600_000_000;
    const DAY_US: i64 = 86_400_000_000;
    let mut tx_id = Int64Builder::with_capacity(n);
    let mut cust = Int64Builder::with_capacity(n);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n);
    let mut amount = Float64Builder::with_capacity(n);
    let mut category = StringBuilder::new();
    let mut channel = StringBuilder::new();
    let mut fraud = BooleanBuilder::with_capacity(n);
    let (mut frauds, mut bayes) = (0usize, 0.0f64);
    for i in 0..n {
        let c = rng.random_range(0..customers.len());
        let customer = &customers[c];
        let channel_weights: &[f64] = match customer.region {
            0 => &[0.45, 0.35, 0.15, 0.05],
            1 => &[0.55, 0.25, 0.12, 0.08],
            _ => &[0.20, 0.25, 0.50, 0.05],
        };
        let category_weights: &[f64] = match customer.region {
            0 => &[0.30, 0.15, 0.10, 0.12, 0.13, 0.10, 0.10],
            1 => &[0.25, 0.20, 0.15, 0.10, 0.10, 0.12, 0.08],
            _ => &[0.25, 0.20, 0.05, 0.15, 0.18, 0.12, 0.05],
        };
        let ch = pick(&mut rng, channel_weights);
        let cat = pick(&mut rng, category_weights);
        let (mu, sd) = [
            (3.5, 0.6),
            (3.3, 0.5),
            (3.8, 0.3),
            (4.3, 0.7),
            (3.0, 0.8),
            (5.5, 0.9),
            (6.0, 0.8),
        ][cat];
        let amt = ((mu + sd * normal(&mut rng)).exp() * 100.0).round() / 100.0;
        let amt = amt.max(0.5);
        // Night hours are rarer; APAC customers shop later.
        let hour_weights: &[f64] = if customer.region == 2 {
            &[0.10, 0.25, 0.35, 0.30]
        } else {
            &[0.05, 0.35, 0.40, 0.20]
        };
        let hour_block = pick(&mut rng, hour_weights) as u32;
        let hour = [0, 6, 12, 18][hour_block as usize] + rng.random_range(0..6);
        let day = rng.random_range(0..365);
        let micros = START_US
            + day * DAY_US
            + i64::from(hour) * 3_600_000_000
            + rng.random_range(0..3_600_000_000i64);
        let p = fraud_probability(amt, ch, cat, hour, customer.credit_score);
        let is_fraud = rng.random::<f64>() < p;
        frauds += usize::from(is_fraud);
        bayes += p.max(1.0 - p);

        tx_id.append_value(i as i64 + 1);
        cust.append_value(c as i64 + 1);
        ts.append_value(micros);
        amount.append_value(amt);
        category.append_value(CATEGORIES[cat]);
        channel.append_value(CHANNELS[ch]);
        fraud.append_value(is_fraud);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(tx_id.finish()),
        Arc::new(cust.finish()),
        Arc::new(ts.finish()),
        Arc::new(amount.finish()),
        Arc::new(category.finish()),
        Arc::new(channel.finish()),
        Arc::new(fraud.finish()),
    ];
    let stats = FraudStats {
        fraud_rate: frauds as f64 / n as f64,
        bayes_accuracy: bayes / n as f64,
    };
    Ok((RecordBatch::try_new(transactions_schema(), columns)?, stats))
}

/// Utterance templates per intent; `{}` is filled with a region's wording.
fn templates(intent: usize) -> &'static [&'static str] {
    match intent {
        0 => &[
            "what is the balance on my {acct}",
            "how much money do i have in my {acct}",
            "can you tell me my current balance please",
            "show me the available funds on my {acct}",
            "i want to check my balance",
        ],
        1 => &[
            "i need to send money to my {rel}",
            "how do i transfer funds to another {acct}",
            "please move 200 from my {acct} to savings",
            "can i make a wire transfer abroad",
            "set up a payment to my {rel}",
        ],
        2 => &[
            "i lost my card",
            "my {card} was stolen yesterday",
            "i cannot find my {card} please block it",
            "someone took my wallet with my {card}",
            "how do i freeze my card i misplaced it",
        ],
        3 => &[
            "there is a payment on my {acct} i did not make",
            "i see a suspicious charge on my {card}",
            "someone used my {card} without permission",
            "report fraud on my {acct}",
            "unknown transaction from an online shop i never visited",
        ],
        _ => &[
            "i would like to apply for a loan",
            "what are your mortgage rates",
            "can i borrow money for a new car",
            "how much could i borrow with my income",
            "i want to refinance my {loan}",
        ],
    }
}

fn generate_support_messages(
    n: usize,
    customers: &[Customer],
) -> Result<RecordBatch, ConnectorError> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED);
    let mut id = Int64Builder::with_capacity(n);
    let mut cust = Int64Builder::with_capacity(n);
    let mut region = StringBuilder::new();
    let mut text = StringBuilder::new();
    let mut intent = StringBuilder::new();
    for i in 0..n {
        let c = rng.random_range(0..customers.len());
        let r = customers[c].region;
        let weights: &[f64] = match r {
            0 => &[0.30, 0.25, 0.15, 0.10, 0.20],
            1 => &[0.20, 0.20, 0.15, 0.15, 0.30],
            _ => &[0.25, 0.35, 0.20, 0.10, 0.10],
        };
        let k = pick(&mut rng, weights);
        let options = templates(k);
        let template = options[rng.random_range(0..options.len())];
        let (acct, card, rel, loan) = match r {
            0 => ("current account", "debit card", "landlord", "mortgage"),
            1 => ("checking account", "credit card", "friend", "auto loan"),
            _ => ("mobile wallet", "bank card", "family", "home loan"),
        };
        let mut utterance = template
            .replace("{acct}", acct)
            .replace("{card}", card)
            .replace("{rel}", rel)
            .replace("{loan}", loan);
        if rng.random::<f64>() < 0.3 {
            utterance = format!(
                "{} {utterance}",
                ["hi", "hello", "please help", "urgent"][rng.random_range(0..4)]
            );
        }
        id.append_value(i as i64 + 1);
        cust.append_value(c as i64 + 1);
        region.append_value(REGIONS[r]);
        text.append_value(utterance);
        intent.append_value(INTENTS[k]);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(cust.finish()),
        Arc::new(region.finish()),
        Arc::new(text.finish()),
        Arc::new(intent.finish()),
    ];
    Ok(RecordBatch::try_new(support_messages_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_documented_rule_holds() {
        let (a, customers) = generate_customers(200).unwrap();
        let (b, _) = generate_customers(200).unwrap();
        assert_eq!(a, b);
        let (t1, s1) = generate_transactions(2000, &customers).unwrap();
        let (t2, s2) = generate_transactions(2000, &customers).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(s1.fraud_rate, s2.fraud_rate);
        // The rule must be learnable: better than always guessing "no fraud".
        assert!(s1.bayes_accuracy > s1.fraud_rate.max(1.0 - s1.fraud_rate));
        assert!(
            s1.fraud_rate > 0.05 && s1.fraud_rate < 0.5,
            "{}",
            s1.fraud_rate
        );
    }

    #[test]
    fn fraud_probability_follows_the_documented_formula() {
        // online (1), electronics (5), 3am, score 650, amount e^2.
        let p = fraud_probability(2f64.exp(), 1, 5, 3, 650);
        let z: f64 = -6.6 + 0.85 * 2.0 + 1.7 + 1.5 + 1.8;
        assert!((p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
    }

    #[tokio::test]
    async fn catalog_is_written_once_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let (_, m1) = open_demo_catalog(dir.path(), 0.01).unwrap();
        let parquet = dir.path().join("demo/scale-0.01/transactions.parquet");
        let modified = fs::metadata(&parquet).unwrap().modified().unwrap();
        let (catalog, m2) = open_demo_catalog(dir.path(), 0.01).unwrap();
        assert_eq!(m1, m2);
        assert_eq!(
            fs::metadata(&parquet).unwrap().modified().unwrap(),
            modified
        );
        let schema = catalog.schema("bank").unwrap();
        let mut names = schema.table_names();
        names.sort();
        assert_eq!(names, ["customers", "support_messages", "transactions"]);
        assert_eq!(m1.customers, 200);
        assert_eq!(m1.transactions, 2000);
    }
}
