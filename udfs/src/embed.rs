//! `embed('encoder', text)`, `cosine_similarity(a, b)`,
//! `cosine_distance(a, b)` and `tokenize('encoder', text)`: sentence
//! embeddings and semantic search in SQL.
//!
//! `embed` returns `FixedSizeList<Float32, dims>` (NULL for NULL text). It is
//! immutable, so with a constant text (`embed('minilm', 'I lost my card')`)
//! DataFusion folds it to a constant while planning: the query encodes it
//! once, not once per row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, Int64Builder,
    ListBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::encoder::{encoders, SentenceEncoder};

/// The type `embed` returns for an encoder of `dims` dimensions.
pub fn embedding_type(dims: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        dims as i32,
    )
}

fn constant_name(function: &str, value: Option<&ScalarValue>) -> DfResult<String> {
    match value {
        Some(ScalarValue::Utf8(Some(s)))
        | Some(ScalarValue::Utf8View(Some(s)))
        | Some(ScalarValue::LargeUtf8(Some(s))) => Ok(s.clone()),
        _ => plan_err!(
            "{function}: the first argument must be the encoder's name as a string constant, \
             e.g. {function}('minilm', text)"
        ),
    }
}

fn encoder(function: &str, value: Option<&ScalarValue>) -> DfResult<Arc<SentenceEncoder>> {
    let name = constant_name(function, value)?;
    encoders()
        .get(&name)
        .map_err(|e| DataFusionError::External(Box::new(e)))
}

/// The encoder a call's first argument names (it must be a constant).
fn encoder_of(function: &str, args: &[ColumnarValue]) -> DfResult<Arc<SentenceEncoder>> {
    let name = match args.first() {
        Some(ColumnarValue::Scalar(s)) => Some(s),
        _ => None,
    };
    encoder(function, name)
}

fn check_text(function: &str, args: &[FieldRef]) -> DfResult<()> {
    if args.len() != 2 {
        return plan_err!(
            "{function} takes 2 arguments (encoder, text), got {}",
            args.len()
        );
    }
    match args[1].data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => Ok(()),
        other => plan_err!("{function}: the text must be a string, got {other}"),
    }
}

fn text_column(arg: &ColumnarValue, rows: usize) -> DfResult<ArrayRef> {
    Ok(cast(&arg.to_array(rows)?, &DataType::Utf8)?)
}

/// `embed('encoder', text)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EmbedUdf {
    signature: Signature,
}

impl Default for EmbedUdf {
    fn default() -> Self {
        EmbedUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for EmbedUdf {
    fn name(&self) -> &str {
        "embed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        // return_field_from_args decides (the width is the encoder's).
        Ok(embedding_type(0))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        check_text(self.name(), args.arg_fields)?;
        let encoder = encoder(
            self.name(),
            args.scalar_arguments.first().copied().flatten(),
        )?;
        Ok(Arc::new(Field::new(
            self.name(),
            embedding_type(encoder.dims()),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let encoder = encoder_of(self.name(), &args.args)?;
        let dims = encoder.dims();
        if args.return_field.data_type() != &embedding_type(dims) {
            return exec_err!("embed: encoder changed while the query ran; run the query again");
        }
        let scalar = matches!(args.args[1], ColumnarValue::Scalar(_));
        let rows = if scalar { 1 } else { args.number_rows };
        let texts = text_column(&args.args[1], rows)?;
        let texts = texts.as_string::<i32>();
        let present: Vec<&str> = texts.iter().flatten().collect();
        let vectors = encoder
            .encode(&present)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut values = Vec::with_capacity(rows * dims);
        let mut next = vectors.chunks_exact(dims);
        for i in 0..rows {
            match (
                texts.is_valid(i),
                texts.is_valid(i).then(|| next.next()).flatten(),
            ) {
                (true, Some(v)) => values.extend_from_slice(v),
                _ => values.extend(std::iter::repeat_n(0.0, dims)),
            }
        }
        let list = FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float32, true)),
            dims as i32,
            Arc::new(Float32Array::from(values)),
            texts.nulls().cloned(),
        )?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::FixedSizeList(Arc::new(list)))
        } else {
            ColumnarValue::Array(Arc::new(list))
        })
    }
}

/// `tokenize('encoder', text)`: the token ids the encoder sees, with
/// `[CLS]`/`[SEP]`, truncated at its maximum length.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TokenizeUdf {
    signature: Signature,
}

impl Default for TokenizeUdf {
    fn default() -> Self {
        TokenizeUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn token_list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
}

impl ScalarUDFImpl for TokenizeUdf {
    fn name(&self) -> &str {
        "tokenize"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(token_list_type())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        check_text(self.name(), args.arg_fields)?;
        encoder(
            self.name(),
            args.scalar_arguments.first().copied().flatten(),
        )?;
        Ok(Arc::new(Field::new(self.name(), token_list_type(), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let encoder = encoder_of(self.name(), &args.args)?;
        let texts = text_column(&args.args[1], args.number_rows)?;
        let mut out = ListBuilder::new(Int64Builder::new());
        for text in texts.as_string::<i32>().iter() {
            match text {
                Some(t) => {
                    let ids = encoder
                        .token_ids(t)
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    out.values()
                        .extend(ids.into_iter().map(|i| Some(i64::from(i))));
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `cosine_similarity(a, b)` or, with `distance`, `cosine_distance(a, b)`
/// (`1 − similarity`), over vectors of equal length (fixed-size or
/// variable lists of floats). NULL if either is NULL or all zeros.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CosineUdf {
    distance: bool,
    signature: Signature,
}

impl CosineUdf {
    /// `cosine_similarity`, or `cosine_distance` when `distance`.
    pub fn new(distance: bool) -> Self {
        CosineUdf {
            distance,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

/// A column of float vectors as one flat f32 buffer plus each row's range.
struct Vectors {
    values: Float32Array,
    ranges: Vec<Option<(usize, usize)>>,
}

impl Vectors {
    fn of(function: &str, array: &ArrayRef) -> DfResult<Vectors> {
        let (values, ranges): (ArrayRef, Vec<Option<(usize, usize)>>) = match array.data_type() {
            DataType::FixedSizeList(_, n) => {
                let list = array.as_fixed_size_list();
                let n = *n as usize;
                let ranges = (0..list.len())
                    .map(|i| list.is_valid(i).then_some((i * n, n)))
                    .collect();
                (Arc::clone(list.values()), ranges)
            }
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let offsets = list.value_offsets();
                let ranges = (0..list.len())
                    .map(|i| {
                        list.is_valid(i).then(|| {
                            let start = offsets[i] as usize;
                            (start, (offsets[i + 1] - offsets[i]) as usize)
                        })
                    })
                    .collect();
                (Arc::clone(list.values()), ranges)
            }
            DataType::Null => (
                Arc::new(Float32Array::from(Vec::<f32>::new())),
                vec![None; array.len()],
            ),
            other => {
                return plan_err!("{function} takes two vectors (lists of floats), got {other}")
            }
        };
        let values = cast(&values, &DataType::Float32)?;
        Ok(Vectors {
            values: values.as_primitive::<Float32Type>().clone(),
            ranges,
        })
    }

    fn row(&self, i: usize) -> Option<&[f32]> {
        let (start, len) = self.ranges.get(i).copied().flatten()?;
        self.values.values().get(start..start + len)
    }
}

impl ScalarUDFImpl for CosineUdf {
    fn name(&self) -> &str {
        if self.distance {
            "cosine_distance"
        } else {
            "cosine_similarity"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        for t in arg_types {
            let ok = match t {
                DataType::FixedSizeList(f, _) | DataType::List(f) => f.data_type().is_numeric(),
                DataType::Null => true,
                _ => false,
            };
            if !ok {
                return plan_err!(
                    "{} takes two vectors (lists of floats), got {t}",
                    self.name()
                );
            }
        }
        if let [DataType::FixedSizeList(_, a), DataType::FixedSizeList(_, b)] = arg_types {
            if a != b {
                return plan_err!("{}: the vectors have {a} and {b} dimensions", self.name());
            }
        }
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let side = |a: &ColumnarValue| -> DfResult<(Vectors, bool)> {
            Ok(match a {
                ColumnarValue::Scalar(s) => (Vectors::of(self.name(), &s.to_array()?)?, true),
                ColumnarValue::Array(a) => (Vectors::of(self.name(), a)?, false),
            })
        };
        let (a, a_const) = side(&args.args[0])?;
        let (b, b_const) = side(&args.args[1])?;
        let n = if all_scalar { 1 } else { rows };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let x = a.row(if a_const { 0 } else { i });
            let y = b.row(if b_const { 0 } else { i });
            out.push(match (x, y) {
                (Some(x), Some(y)) => {
                    if x.len() != y.len() {
                        return exec_err!(
                            "{}: the vectors have {} and {} dimensions",
                            self.name(),
                            x.len(),
                            y.len()
                        );
                    }
                    cosine(x, y).map(|s| if self.distance { 1.0 - s } else { s })
                }
                _ => None,
            });
        }
        let array = Float64Array::from(out);
        Ok(if all_scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(Arc::new(array))
        })
    }
}

/// The cosine of the angle between `x` and `y`, accumulated in f64; `None`
/// for a zero vector.
pub fn cosine(x: &[f32], y: &[f32]) -> Option<f64> {
    let (mut dot, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (a, b) in x.iter().zip(y) {
        let (a, b) = (f64::from(*a), f64::from(*b));
        dot += a * b;
        xx += a * a;
        yy += b * b;
    }
    let norm = (xx * yy).sqrt();
    (norm > 0.0).then(|| dot / norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn cosine_over_fixed_and_variable_lists() {
        let ctx = SessionContext::new();
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            CosineUdf::new(false),
        ));
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            CosineUdf::new(true),
        ));
        let batches = ctx
            .sql(
                "SELECT cosine_similarity(a, b) AS s, cosine_distance(a, b) AS d FROM (VALUES \
                 (make_array(1.0, 0.0), make_array(1.0, 0.0)), \
                 (make_array(1.0, 0.0), make_array(0.0, 2.0)), \
                 (make_array(1.0, 1.0), make_array(-1.0, -1.0)), \
                 (make_array(0.0, 0.0), make_array(1.0, 1.0)), \
                 (NULL, make_array(1.0, 1.0))) AS t(a, b)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let s = batches[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        let d = batches[0]
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        let want = [Some(1.0), Some(0.0), Some(-1.0), None, None];
        for (got, want) in s.iter().zip(want) {
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{g} vs {w}"),
                (g, w) => assert_eq!(g, w),
            }
        }
        assert!((d.value(2) - 2.0).abs() < 1e-9);
        let err = ctx
            .sql("SELECT cosine_similarity(make_array(1.0), 'x')")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes two vectors"), "{err}");
    }
}
