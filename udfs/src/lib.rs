//! fedsql's models: local training with Burn, aggregation strategies, weight
//! exchange over Arrow Flight and `predict()`.
//!
//! Empty until federated training lands: `TRAIN MODEL` and the other model
//! statements parse (see `fedsql-sql`) and answer SQLSTATE 0A000 meanwhile.
