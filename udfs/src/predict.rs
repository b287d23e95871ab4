//! `predict('model', features…)` and `predict_proba('model', features…)`:
//! score rows with a registered model in any query.
//!
//! The model is named by a constant: `'fraud'` (the active version) or
//! `'fraud@3'`. Features follow in the order `DESCRIBE MODEL` lists them and
//! go through the model's stored transform, so a prediction sees exactly
//! what training saw. The whole batch is scored at once; loaded models are
//! cached by the registry.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::registry::{LoadedModel, ModelRegistry, Task};
use crate::train::predict;

/// Which of the two functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// The predicted value: the class label, or the regression value.
    Value,
    /// The probability of the positive (second) class, or of the predicted
    /// class for multi-class models.
    Probability,
}

/// `predict` / `predict_proba` over a model registry.
#[derive(Debug)]
pub struct PredictUdf {
    registry: Arc<ModelRegistry>,
    output: Output,
    signature: Signature,
}

impl PredictUdf {
    /// The function for `output`, reading models from `registry`.
    pub fn new(registry: Arc<ModelRegistry>, output: Output) -> Self {
        PredictUdf {
            registry,
            output,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }

    fn model(&self, name: Option<&ScalarValue>) -> DfResult<Arc<LoadedModel>> {
        let name = match name {
            Some(ScalarValue::Utf8(Some(s)))
            | Some(ScalarValue::Utf8View(Some(s)))
            | Some(ScalarValue::LargeUtf8(Some(s))) => s.clone(),
            _ => {
                return plan_err!(
                    "{}: the first argument must be the model name as a string constant, e.g. '{}'",
                    self.name(),
                    "fraud"
                )
            }
        };
        self.registry
            .load(&name)
            .map_err(|e| DataFusionError::Plan(format!("{}: {e}", self.name())))
    }

    fn output_type(&self, model: &LoadedModel) -> DataType {
        match (self.output, &model.meta.task) {
            (Output::Probability, _) | (Output::Value, Task::Regression { .. }) => {
                DataType::Float64
            }
            (Output::Value, Task::Classification { boolean: true, .. }) => DataType::Boolean,
            (Output::Value, Task::Classification { .. }) => DataType::Utf8,
        }
    }
}

impl PartialEq for PredictUdf {
    fn eq(&self, other: &Self) -> bool {
        self.output == other.output
    }
}

impl Eq for PredictUdf {}

impl Hash for PredictUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.output.hash(state);
    }
}

impl ScalarUDFImpl for PredictUdf {
    fn name(&self) -> &str {
        match self.output {
            Output::Value => "predict",
            Output::Probability => "predict_proba",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        // return_field_from_args decides; this is only a fallback.
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let model = self.model(args.scalar_arguments.first().copied().flatten())?;
        let expected = model.meta.transform.features.len();
        let given = args.arg_fields.len().saturating_sub(1);
        if given != expected {
            return plan_err!(
                "{}('{}', …) takes {expected} feature(s) in this order: {}; got {given}",
                self.name(),
                model.meta.model,
                model.meta.transform.feature_names().join(", ")
            );
        }
        Ok(Arc::new(Field::new(
            self.name(),
            self.output_type(&model),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = match args.args.first() {
            Some(ColumnarValue::Scalar(s)) => Some(s.clone()),
            _ => None,
        };
        let model = self.model(name.as_ref())?;
        let rows = args.number_rows;
        let columns = args.args[1..]
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<Vec<ArrayRef>>>()?;
        let meta = &model.meta;
        let features = meta
            .transform
            .encode(&columns)
            .map_err(|e| DataFusionError::Execution(format!("{}: {e}", self.name())))?;
        let classifier = matches!(meta.task, Task::Classification { .. });
        let outputs = predict(
            &meta.architecture,
            &model.weights,
            &features,
            rows,
            classifier,
        )
        .map_err(|e| DataFusionError::Execution(format!("{}: {e}", self.name())))?;
        let array: ArrayRef = match (&meta.task, self.output) {
            (Task::Regression { mean, std }, _) => Arc::new(Float64Array::from_iter_values(
                outputs.iter().map(|v| f64::from(*v) * std + mean),
            )),
            (Task::Classification { labels, boolean }, output) => {
                let k = labels.len();
                let best = |r: usize| -> (usize, f32) {
                    outputs[r * k..(r + 1) * k]
                        .iter()
                        .copied()
                        .enumerate()
                        .fold((0, f32::MIN), |b, (i, p)| if p > b.1 { (i, p) } else { b })
                };
                match output {
                    Output::Probability if k == 2 => Arc::new(Float64Array::from_iter_values(
                        (0..rows).map(|r| f64::from(outputs[r * 2 + 1])),
                    )),
                    Output::Probability => Arc::new(Float64Array::from_iter_values(
                        (0..rows).map(|r| f64::from(best(r).1)),
                    )),
                    Output::Value if *boolean => Arc::new(BooleanArray::from_iter(
                        (0..rows).map(|r| Some(labels[best(r).0] == "true")),
                    )),
                    Output::Value => Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|r| labels[best(r).0].clone()),
                    )),
                }
            }
        };
        if array.data_type() != args.return_field.data_type() {
            return exec_err!(
                "{}: model {} changed while the query ran; run the query again",
                self.name(),
                meta.model
            );
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// `predict_table('model', 'SELECT …')`: the query's rows with a
/// `prediction` column (and `probability` for classifiers), features matched
/// by column name rather than position.
///
/// The table is a view over `SELECT *, predict(…) AS prediction FROM (query)`,
/// so it plans, pushes down and streams like any query.
#[derive(Debug)]
pub struct PredictTable {
    registry: Arc<ModelRegistry>,
}

impl PredictTable {
    /// The table function over `registry`.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        PredictTable { registry }
    }
}

fn string_literal(e: &datafusion::logical_expr::Expr, what: &str) -> DfResult<String> {
    match e {
        datafusion::logical_expr::Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Ok(s.clone()),
        _ => plan_err!("predict_table: the {what} must be a string literal"),
    }
}

impl datafusion::catalog::TableFunctionImpl for PredictTable {
    fn call(
        &self,
        _args: &[datafusion::logical_expr::Expr],
    ) -> DfResult<Arc<dyn datafusion::catalog::TableProvider>> {
        plan_err!("predict_table needs a session")
    }

    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> DfResult<Arc<dyn datafusion::catalog::TableProvider>> {
        use datafusion::execution::SessionState;
        use datafusion::logical_expr::{col, lit, Expr, LogicalPlanBuilder, ScalarUDF};

        let [model, query] = args.exprs() else {
            return plan_err!("predict_table('model', 'SELECT …') takes two arguments");
        };
        let model = string_literal(model, "model name")?;
        let query = string_literal(query, "query")?;
        let loaded = self
            .registry
            .load(&model)
            .map_err(|e| DataFusionError::Plan(format!("predict_table: {e}")))?;
        let Some(state) = args.session().as_any().downcast_ref::<SessionState>() else {
            return plan_err!("predict_table: unsupported session");
        };
        // Table functions are planned synchronously, but planning the inner
        // query may resolve tables asynchronously: wait for it on this
        // worker (fedsql runs a multi-threaded runtime).
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| DataFusionError::Plan("predict_table: no async runtime".into()))?;
        let inner =
            tokio::task::block_in_place(|| handle.block_on(state.create_logical_plan(&query)))?;
        let names: Vec<String> = inner
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let features = loaded.meta.transform.feature_names();
        if let Some(missing) = features.iter().find(|f| !names.contains(f)) {
            return plan_err!(
                "predict_table: the query has no column {missing}; model {} needs {}",
                loaded.meta.model,
                features.join(", ")
            );
        }
        let call = |output: Output| {
            let mut call_args = vec![lit(model.clone())];
            call_args.extend(features.iter().map(|f| col(format!("\"{f}\""))));
            Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(PredictUdf::new(
                    Arc::clone(&self.registry),
                    output,
                ))),
                call_args,
            ))
        };
        let mut exprs: Vec<Expr> = names.iter().map(|n| col(format!("\"{n}\""))).collect();
        exprs.push(call(Output::Value).alias("prediction"));
        if matches!(loaded.meta.task, Task::Classification { .. }) {
            exprs.push(call(Output::Probability).alias("probability"));
        }
        let plan = LogicalPlanBuilder::from(inner).project(exprs)?.build()?;
        Ok(Arc::new(datafusion::catalog::view::ViewTable::new(
            plan, None,
        )))
    }
}
