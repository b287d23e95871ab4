//! Federated preprocessing: turning a client's rows into a feature matrix
//! with statistics every client contributes to but no client reveals rows
//! for.
//!
//! Each client summarises its own columns ([`ColumnSummary`]: counts, sums,
//! sums of squares, the distinct values of short text up to a cap); the
//! coordinator merges the summaries into one [`FeatureTransform`], stored
//! with the model so `predict` applies the identical transform:
//!
//! - numeric, boolean and temporal columns are standardized
//!   (`(x − mean) / std`), NULL becomes the mean (0 after scaling);
//! - text with at most [`ONE_HOT_LIMIT`] distinct values is one-hot encoded
//!   (NULL and unseen values are all zeros);
//! - other text is a hashed bag of words ([`HASH_BUCKETS`] buckets of
//!   `log(1 + count)`), so free text such as support messages can train an
//!   intent classifier — or, when the model names a sentence encoder
//!   (`text_classifier`), that encoder's embedding, which carries meaning
//!   rather than words.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Float64Type, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Result, UdfError};

/// Text columns with at most this many distinct values are one-hot encoded.
pub const ONE_HOT_LIMIT: usize = 32;
/// Buckets of the hashed bag of words.
pub const HASH_BUCKETS: usize = 256;

/// How a column is read before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    Numeric,
    Text,
    /// A fixed-size list of numbers (an embedding): one feature per element.
    Vector,
}

/// The kind of an Arrow column, or `None` if fedsql cannot use it.
pub fn column_kind(data_type: &DataType) -> Option<ColumnKind> {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _) => {
            Some(ColumnKind::Text)
        }
        DataType::FixedSizeList(item, n) if item.data_type().is_numeric() && *n > 0 => {
            Some(ColumnKind::Vector)
        }
        t if t.is_numeric()
            || matches!(
                t,
                DataType::Boolean
                    | DataType::Date32
                    | DataType::Date64
                    | DataType::Timestamp(_, _)
                    | DataType::Time32(_)
                    | DataType::Time64(_)
            ) =>
        {
            Some(ColumnKind::Numeric)
        }
        _ => None,
    }
}

/// A column's values as f64 (NULL as NaN). Timestamps become seconds.
pub fn numeric_values(array: &ArrayRef) -> Result<Vec<f64>> {
    let array = match array.data_type() {
        DataType::Timestamp(_, _) => cast(array, &DataType::Timestamp(TimeUnit::Second, None))
            .and_then(|a| cast(&a, &DataType::Int64)),
        DataType::Date32 | DataType::Date64 => {
            cast(array, &DataType::Date32).and_then(|a| cast(&a, &DataType::Int32))
        }
        DataType::Time32(_) | DataType::Time64(_) => {
            cast(array, &DataType::Time64(TimeUnit::Microsecond))
                .and_then(|a| cast(&a, &DataType::Int64))
        }
        _ => Ok(Arc::clone(array)),
    }
    .and_then(|a| cast(&a, &DataType::Float64))
    .map_err(|e| {
        UdfError::Input(format!(
            "cannot read a {} column as numbers: {e}",
            array.data_type()
        ))
    })?;
    let values: &Float64Array = array.as_primitive::<Float64Type>();
    Ok((0..values.len())
        .map(|i| {
            if values.is_null(i) {
                f64::NAN
            } else {
                values.value(i)
            }
        })
        .collect())
}

/// A column's values as text (NULL as `None`).
pub fn text_values(array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let array = cast(array, &DataType::Utf8).map_err(|e| {
        UdfError::Input(format!(
            "cannot read a {} column as text: {e}",
            array.data_type()
        ))
    })?;
    let strings = array.as_string::<i32>();
    Ok((0..strings.len())
        .map(|i| (!strings.is_null(i)).then(|| strings.value(i).to_string()))
        .collect())
}

/// A text value becomes a shared category only if a client has it in at
/// least this many rows: a value that rare could identify a row, and what
/// a client summarises leaves it (a site's rows never do).
pub const MIN_CATEGORY_ROWS: u64 = 3;

/// What one client tells the coordinator about one column.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ColumnSummary {
    pub count: u64,
    pub sum: f64,
    pub sum_squares: f64,
    /// Distinct text values seen in at least [`MIN_CATEGORY_ROWS`] rows, at
    /// most `ONE_HOT_LIMIT` of them; empty when `many`.
    pub distinct: BTreeSet<String>,
    /// The column has more than `ONE_HOT_LIMIT` distinct values (or only
    /// rare ones): free text, hashed into words, and no value is reported.
    #[serde(default)]
    pub many: bool,
}

impl ColumnSummary {
    /// Summarises one client's column.
    pub fn of(kind: ColumnKind, array: &ArrayRef) -> Result<ColumnSummary> {
        let mut s = ColumnSummary::default();
        match kind {
            ColumnKind::Vector => s.count = (array.len() - array.null_count()) as u64,
            ColumnKind::Numeric => {
                for v in numeric_values(array)? {
                    if v.is_finite() {
                        s.count += 1;
                        s.sum += v;
                        s.sum_squares += v * v;
                    }
                }
            }
            ColumnKind::Text => {
                let mut counts: std::collections::HashMap<String, u64> =
                    std::collections::HashMap::new();
                for v in text_values(array)?.into_iter().flatten() {
                    s.count += 1;
                    if s.many {
                        continue;
                    }
                    *counts.entry(v).or_default() += 1;
                    if counts.len() > ONE_HOT_LIMIT {
                        s.many = true;
                        counts.clear();
                    }
                }
                s.distinct = counts
                    .into_iter()
                    .filter(|(_, n)| *n >= MIN_CATEGORY_ROWS)
                    .map(|(v, _)| v)
                    .collect();
                if s.count > 0 && s.distinct.is_empty() {
                    s.many = true;
                }
            }
        }
        Ok(s)
    }

    /// Adds another client's summary.
    pub fn merge(&mut self, other: &ColumnSummary) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
        self.many |= other.many;
        for v in &other.distinct {
            if self.distinct.len() > ONE_HOT_LIMIT {
                break;
            }
            self.distinct.insert(v.clone());
        }
    }
}

/// How one input column becomes features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum Encoding {
    Standardized {
        mean: f64,
        std: f64,
    },
    OneHot {
        categories: Vec<String>,
    },
    HashedWords {
        buckets: usize,
    },
    /// A fixed-size list of numbers as they are (embeddings are already
    /// on a common scale); NULL is all zeros.
    Vector {
        dims: usize,
    },
    /// The embedding of a pretrained sentence encoder (frozen: only the
    /// model on top of it trains and travels).
    Sentence {
        encoder: String,
        dims: usize,
    },
}

impl Encoding {
    /// The number of features this column becomes.
    pub fn width(&self) -> usize {
        match self {
            Encoding::Standardized { .. } => 1,
            Encoding::OneHot { categories } => categories.len(),
            Encoding::HashedWords { buckets } => *buckets,
            Encoding::Sentence { dims, .. } | Encoding::Vector { dims } => *dims,
        }
    }
}

/// One input column of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    /// The column's Arrow type as training saw it, for messages.
    pub data_type: String,
    pub encoding: Encoding,
}

/// The transform from input columns to the model's feature matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTransform {
    pub features: Vec<Feature>,
}

impl FeatureTransform {
    /// Builds the transform from the merged summaries of every client; free
    /// text goes through `sentence` (an encoder's name and width) when given.
    pub fn from_summaries(
        columns: &[(String, DataType, ColumnKind, ColumnSummary)],
        sentence: Option<(&str, usize)>,
    ) -> FeatureTransform {
        let features = columns
            .iter()
            .map(|(name, data_type, kind, s)| {
                let encoding = match kind {
                    ColumnKind::Vector => Encoding::Vector {
                        dims: match data_type {
                            DataType::FixedSizeList(_, n) => *n as usize,
                            _ => 0,
                        },
                    },
                    ColumnKind::Numeric => {
                        let n = s.count.max(1) as f64;
                        let mean = s.sum / n;
                        let var = (s.sum_squares / n - mean * mean).max(0.0);
                        let std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
                        Encoding::Standardized { mean, std }
                    }
                    ColumnKind::Text if !s.many && s.distinct.len() <= ONE_HOT_LIMIT => {
                        Encoding::OneHot {
                            categories: s.distinct.iter().cloned().collect(),
                        }
                    }
                    ColumnKind::Text => match sentence {
                        Some((encoder, dims)) => Encoding::Sentence {
                            encoder: encoder.to_string(),
                            dims,
                        },
                        None => Encoding::HashedWords {
                            buckets: HASH_BUCKETS,
                        },
                    },
                };
                Feature {
                    name: name.clone(),
                    data_type: data_type.to_string(),
                    encoding,
                }
            })
            .collect();
        FeatureTransform { features }
    }

    /// The width of the feature matrix.
    pub fn width(&self) -> usize {
        self.features.iter().map(|f| f.encoding.width()).sum()
    }

    /// Encodes columns given in [`FeatureTransform::features`]' order into a
    /// row-major matrix.
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Vec<f32>> {
        if columns.len() != self.features.len() {
            return Err(UdfError::Input(format!(
                "expected {} feature columns ({}), got {}",
                self.features.len(),
                self.feature_names().join(", "),
                columns.len()
            )));
        }
        let rows = columns.first().map_or(0, |c| c.len());
        let width = self.width();
        let mut matrix = vec![0f32; rows * width];
        let mut offset = 0;
        for (feature, column) in self.features.iter().zip(columns) {
            match &feature.encoding {
                Encoding::Standardized { mean, std } => {
                    if column_kind(column.data_type()) != Some(ColumnKind::Numeric) {
                        return Err(type_error(feature, column.data_type()));
                    }
                    for (r, v) in numeric_values(column)?.into_iter().enumerate() {
                        let z = if v.is_finite() { (v - mean) / std } else { 0.0 };
                        matrix[r * width + offset] = z as f32;
                    }
                }
                Encoding::OneHot { categories } => {
                    for (r, v) in text_values(column)?.into_iter().enumerate() {
                        if let Some(i) = v.and_then(|v| categories.binary_search(&v).ok()) {
                            matrix[r * width + offset + i] = 1.0;
                        }
                    }
                }
                Encoding::HashedWords { buckets } => {
                    for (r, v) in text_values(column)?.into_iter().enumerate() {
                        let row = &mut matrix[r * width + offset..r * width + offset + buckets];
                        for word in words(v.as_deref().unwrap_or("")) {
                            row[(fnv1a(&word) % *buckets as u64) as usize] += 1.0;
                        }
                        for x in row.iter_mut() {
                            *x = x.ln_1p();
                        }
                    }
                }
                Encoding::Vector { dims } => {
                    let wanted = DataType::FixedSizeList(
                        Arc::new(Field::new_list_field(DataType::Float32, true)),
                        *dims as i32,
                    );
                    if !matches!(column.data_type(), DataType::FixedSizeList(_, n) if *n as usize == *dims)
                    {
                        return Err(type_error(feature, column.data_type()));
                    }
                    let list = cast(column, &wanted).map_err(|e| {
                        UdfError::Input(format!("reading feature {}: {e}", feature.name))
                    })?;
                    let list = list.as_fixed_size_list();
                    let values = list.values().as_primitive::<Float32Type>();
                    for r in 0..list.len() {
                        if list.is_valid(r) {
                            for (j, slot) in matrix[r * width + offset..r * width + offset + dims]
                                .iter_mut()
                                .enumerate()
                            {
                                let v = values.value(r * dims + j);
                                *slot = if v.is_finite() { v } else { 0.0 };
                            }
                        }
                    }
                }
                Encoding::Sentence { encoder, dims } => {
                    let encoder = crate::encoder::encoders().get(encoder)?;
                    if encoder.dims() != *dims {
                        return Err(UdfError::Input(format!(
                            "feature {} was trained on a {dims}-dimensional encoder; the \
                             encoder of that name now makes {} dimensions",
                            feature.name,
                            encoder.dims()
                        )));
                    }
                    let texts = text_values(column)?;
                    let present: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
                    tracing::debug!(rows = present.len(), "encoding text");
                    let vectors = encoder.encode(&present)?;
                    let mut next = vectors.chunks_exact(*dims);
                    for (r, text) in texts.iter().enumerate() {
                        if text.is_some() {
                            if let Some(v) = next.next() {
                                matrix[r * width + offset..r * width + offset + dims]
                                    .copy_from_slice(v);
                            }
                        }
                    }
                }
            }
            offset += feature.encoding.width();
        }
        Ok(matrix)
    }

    /// The input columns, in order.
    pub fn feature_names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }

    /// Columns of `batch` by feature name, in feature order.
    pub fn columns_by_name(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.features
            .iter()
            .map(|f| {
                batch.column_by_name(&f.name).cloned().ok_or_else(|| {
                    UdfError::Input(format!(
                        "missing feature column {} (the model needs {})",
                        f.name,
                        self.feature_names().join(", ")
                    ))
                })
            })
            .collect()
    }
}

fn type_error(feature: &Feature, got: &DataType) -> UdfError {
    UdfError::Input(format!(
        "feature {} was trained as {} but got {got}",
        feature.name, feature.data_type
    ))
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// FNV-1a: a stable hash, so buckets do not change between builds.
fn fnv1a(word: &str) -> u64 {
    word.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};

    #[test]
    fn summaries_merge_into_global_statistics() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None]));
        let b: ArrayRef = Arc::new(Float64Array::from(vec![3.0, 4.0]));
        let mut s = ColumnSummary::of(ColumnKind::Numeric, &a).unwrap();
        s.merge(&ColumnSummary::of(ColumnKind::Numeric, &b).unwrap());
        assert_eq!((s.count, s.sum, s.sum_squares), (4, 10.0, 30.0));
        let t = FeatureTransform::from_summaries(
            &[("x".into(), DataType::Int64, ColumnKind::Numeric, s)],
            None,
        );
        // mean 2.5, population std √1.25
        let Encoding::Standardized { mean, std } = t.features[0].encoding else {
            panic!("standardized")
        };
        assert_eq!(mean, 2.5);
        assert!((std - 1.25f64.sqrt()).abs() < 1e-12);
        let m = t.encode(&[a]).unwrap();
        assert!((m[0] as f64 - (1.0 - 2.5) / std).abs() < 1e-6);
        assert_eq!(m[2], 0.0, "NULL imputed with the mean");
    }

    #[test]
    fn text_is_one_hot_or_hashed() {
        // Each value in at least MIN_CATEGORY_ROWS rows; "rare" in one row
        // is not reported (and encodes as no category).
        let mut values = vec![Some("b"), Some("a"), None];
        values.extend([Some("a"), Some("a"), Some("b"), Some("b"), Some("rare")]);
        let low: ArrayRef = Arc::new(StringArray::from(values));
        let s = ColumnSummary::of(ColumnKind::Text, &low).unwrap();
        assert!(!s.distinct.contains("rare") && !s.many);
        let t = FeatureTransform::from_summaries(
            &[("c".into(), DataType::Utf8, ColumnKind::Text, s)],
            None,
        );
        assert_eq!(t.width(), 2);
        assert_eq!(
            t.encode(&[low]).unwrap()[..6],
            [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            t.encode(&[Arc::new(StringArray::from(vec!["rare"])) as ArrayRef])
                .unwrap(),
            [0.0, 0.0]
        );

        let many: Vec<String> = (0..100).map(|i| format!("word{i} card")).collect();
        let free: ArrayRef = Arc::new(StringArray::from(many));
        let s = ColumnSummary::of(ColumnKind::Text, &free).unwrap();
        // Free text: no value is reported at all.
        assert!(s.many && s.distinct.is_empty());
        let t = FeatureTransform::from_summaries(
            &[("m".into(), DataType::Utf8, ColumnKind::Text, s)],
            None,
        );
        assert_eq!(t.width(), HASH_BUCKETS);
        let m = t.encode(&[free]).unwrap();
        // Every row has "card" in the same bucket.
        let bucket = (fnv1a("card") % HASH_BUCKETS as u64) as usize;
        assert!((0..100).all(|r| m[r * HASH_BUCKETS + bucket] > 0.0));
    }

    #[test]
    fn fixed_size_lists_are_one_feature_per_element() {
        use datafusion::arrow::array::FixedSizeListArray;
        let item = Arc::new(Field::new_list_field(DataType::Float64, true));
        let v: ArrayRef = Arc::new(FixedSizeListArray::new(
            item,
            3,
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 9.0, 9.0, 9.0])),
            Some(vec![true, false].into()),
        ));
        assert_eq!(column_kind(v.data_type()), Some(ColumnKind::Vector));
        let s = ColumnSummary::of(ColumnKind::Vector, &v).unwrap();
        assert_eq!(s.count, 1);
        let t = FeatureTransform::from_summaries(
            &[("v".into(), v.data_type().clone(), ColumnKind::Vector, s)],
            None,
        );
        assert_eq!(t.width(), 3);
        // The NULL row is all zeros.
        assert_eq!(t.encode(&[v]).unwrap(), [1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
        let short: ArrayRef = Arc::new(FixedSizeListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            2,
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            None,
        ));
        assert!(t.encode(&[short]).is_err());
    }

    #[test]
    fn wrong_columns_are_clear_errors() {
        let s = ColumnSummary::default();
        let t = FeatureTransform::from_summaries(
            &[("x".into(), DataType::Float64, ColumnKind::Numeric, s)],
            None,
        );
        let text: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let err = t.encode(&[text]).unwrap_err().to_string();
        assert!(err.contains("feature x was trained as Float64"), "{err}");
        let err = t.encode(&[]).unwrap_err().to_string();
        assert!(err.contains("expected 1 feature columns (x)"), "{err}");
    }
}
