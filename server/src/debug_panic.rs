//! `fedsql_debug_panic(text)`: a scalar function that panics with its
//! argument, registered only when the environment variable
//! `FEDSQL_DEBUG_PANIC_UDF=1` is set when the server starts. The tests use it
//! to prove that a panic inside one statement's execution ends that
//! statement with XX000 while the server keeps serving; it is never
//! registered otherwise.

use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// The environment variable that turns the function on.
pub const ENABLE_VAR: &str = "FEDSQL_DEBUG_PANIC_UDF";

#[derive(Debug, PartialEq, Eq, Hash)]
struct DebugPanic {
    signature: Signature,
}

impl ScalarUDFImpl for DebugPanic {
    fn name(&self) -> &str {
        "fedsql_debug_panic"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        // Deliberate: this function exists to panic (see the module docs).
        #[allow(clippy::panic)]
        {
            panic!(
                "fedsql_debug_panic called with {} argument(s)",
                args.args.len()
            )
        }
    }
}

/// Registers the function in `ctx` if [`ENABLE_VAR`] is `1`.
pub fn register(ctx: &SessionContext) {
    if std::env::var(ENABLE_VAR).as_deref() == Ok("1") {
        ctx.register_udf(ScalarUDF::from(DebugPanic {
            signature: Signature::variadic_any(Volatility::Volatile),
        }));
    }
}
