//! The Flight SQL endpoint through arrow-flight's own Rust client, over a
//! real loopback socket, checked against the Postgres wire of the same
//! server.

use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int64Builder, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use arrow_flight::FlightInfo;
use fedsql_tests::FedsqlServer;
use futures::TryStreamExt;
use std::sync::Arc;
use tonic::transport::Channel;

async fn client(server: &FedsqlServer) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.flight_port))
        .expect("valid uri")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to Flight SQL on {}: {e}", server.flight_port));
    FlightSqlServiceClient::new(channel)
}

/// Reads every endpoint of a FlightInfo.
async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("endpoint has a ticket");
        let stream = client.do_get(ticket).await.expect("do_get");
        batches.extend(stream.try_collect::<Vec<_>>().await.expect("read batches"));
    }
    batches
}

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    fetch(client, info).await
}

/// A cell, the same whichever wire it came over.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// Microseconds since the epoch.
    Time(i64),
    List(Vec<Value>),
}

fn arrow_value(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let any = array.as_any();
    match array.data_type() {
        DataType::Boolean => Value::Bool(any.downcast_ref::<BooleanArray>().unwrap().value(row)),
        DataType::Int16 => Value::Int(any.downcast_ref::<Int16Array>().unwrap().value(row).into()),
        DataType::Int32 => Value::Int(any.downcast_ref::<Int32Array>().unwrap().value(row).into()),
        DataType::Int64 => Value::Int(any.downcast_ref::<Int64Array>().unwrap().value(row)),
        DataType::Float32 => Value::Float(
            any.downcast_ref::<Float32Array>()
                .unwrap()
                .value(row)
                .into(),
        ),
        DataType::Float64 => Value::Float(any.downcast_ref::<Float64Array>().unwrap().value(row)),
        DataType::Utf8 => Value::Text(
            any.downcast_ref::<StringArray>()
                .unwrap()
                .value(row)
                .to_string(),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Value::Time(
            any.downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .value(row),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Value::Time(
            any.downcast_ref::<TimestampNanosecondArray>()
                .unwrap()
                .value(row)
                / 1000,
        ),
        DataType::List(_) => {
            let inner = any.downcast_ref::<ListArray>().unwrap().value(row);
            Value::List((0..inner.len()).map(|i| arrow_value(&inner, i)).collect())
        }
        other => panic!("the test does not compare {other} columns"),
    }
}

fn arrow_rows(batches: &[RecordBatch]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| arrow_value(c, row))
                    .collect(),
            );
        }
    }
    rows
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn pg_rows(rows: &[tokio_postgres::Row]) -> Vec<Vec<Value>> {
    use tokio_postgres::types::Type;
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, col)| {
                    let v = match *col.type_() {
                        Type::BOOL => row.get::<_, Option<bool>>(i).map(Value::Bool),
                        Type::INT2 => row.get::<_, Option<i16>>(i).map(|v| Value::Int(v.into())),
                        Type::INT4 => row.get::<_, Option<i32>>(i).map(|v| Value::Int(v.into())),
                        Type::INT8 => row.get::<_, Option<i64>>(i).map(Value::Int),
                        Type::FLOAT4 => {
                            row.get::<_, Option<f32>>(i).map(|v| Value::Float(v.into()))
                        }
                        Type::FLOAT8 => row.get::<_, Option<f64>>(i).map(Value::Float),
                        Type::TEXT | Type::VARCHAR => {
                            row.get::<_, Option<String>>(i).map(Value::Text)
                        }
                        Type::TIMESTAMP | Type::TIMESTAMPTZ => row
                            .get::<_, Option<SystemTime>>(i)
                            .map(|t| Value::Time(micros(t))),
                        Type::INT8_ARRAY => row.get::<_, Option<Vec<Option<i64>>>>(i).map(|v| {
                            Value::List(
                                v.into_iter()
                                    .map(|x| x.map(Value::Int).unwrap_or(Value::Null))
                                    .collect(),
                            )
                        }),
                        ref other => panic!("the test does not compare {other} columns"),
                    };
                    v.unwrap_or(Value::Null)
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn flight_results_equal_pg_wire_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut flight = client(&server).await;
    let pg = server.connect("demo").await;
    let queries = [
        "SELECT * FROM bank.customers ORDER BY customer_id",
        "SELECT * FROM bank.transactions ORDER BY tx_id LIMIT 2000",
        "SELECT region, count(*) AS n, avg(amount) AS avg_amount, max(ts) AS last \
         FROM bank.transactions t JOIN bank.customers c USING (customer_id) \
         GROUP BY region ORDER BY region",
        "SELECT * FROM (VALUES (1, NULL, 'x', true), (2, 2.5, NULL, NULL)) AS t(a, b, c, d) ORDER BY a",
        "SELECT make_array(1, 2, 3) AS l, CAST(NULL AS BIGINT) AS n, 'ünïcødé ✓' AS u, \
         CAST(-9223372036854775808 AS BIGINT) AS min_i64, CAST('NaN' AS DOUBLE) AS nan",
        "SELECT arrow_cast('2024-03-01T12:00:00+02:00', 'Timestamp(Microsecond, Some(\"+00:00\"))') AS tz, \
         CAST('1969-07-20T20:17:40' AS TIMESTAMP) AS naive",
    ];
    for sql in queries {
        let over_flight = arrow_rows(&query(&mut flight, sql).await);
        let over_pg = pg_rows(&pg.query(sql, &[]).await.unwrap());
        assert!(!over_flight.is_empty(), "{sql}: no rows");
        assert_eq!(over_flight.len(), over_pg.len(), "{sql}: row counts");
        for (f, p) in over_flight.iter().zip(&over_pg) {
            // NaN is not equal to itself; compare its bits' meaning.
            let same = f.iter().zip(p).all(|(a, b)| match (a, b) {
                (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
                _ => a == b,
            });
            assert!(same, "{sql}:\n flight {f:?}\n pg     {p:?}");
        }
    }
}

#[tokio::test]
async fn unordered_scans_split_into_endpoints_that_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut flight = client(&server).await;
    // Each input of a UNION ALL is its own partition: two endpoints, each
    // readable alone. (A scan split by a repartition is not: it would have
    // to buffer one endpoint while the client reads the other.)
    let info = flight
        .execute(
            "SELECT tx_id, 'a' AS side FROM bank.transactions \
             UNION ALL SELECT tx_id, 'b' FROM bank.transactions"
                .into(),
            None,
        )
        .await
        .unwrap();
    let endpoints = info.endpoint.len();
    let rows = arrow_rows(&fetch(&mut flight, info).await);
    let mut keys: Vec<(i64, String)> = rows
        .iter()
        .map(|r| match (&r[0], &r[1]) {
            (Value::Int(v), Value::Text(s)) => (*v, s.clone()),
            other => panic!("row {other:?}"),
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), rows.len(), "no row is sent twice");
    let pg = server.connect("demo").await;
    let count: i64 = pg
        .query_one("SELECT count(*) FROM bank.transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows.len() as i64, 2 * count);
    assert_eq!(endpoints, 2);

    let info = flight
        .execute(
            "SELECT region, count(*) FROM bank.customers GROUP BY region".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        info.endpoint.len(),
        1,
        "a repartitioned plan is one endpoint"
    );

    // A ticket works once.
    let info = flight.execute("SELECT 1".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    flight
        .do_get(ticket.clone())
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let again = flight.do_get(ticket).await;
    let err = match again {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("ticket"), "{err}");
}

#[tokio::test]
async fn prepared_statements_bind_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut flight = client(&server).await;
    let mut prepared = flight
        .prepare(
            "SELECT customer_id, region FROM bank.customers WHERE customer_id = $1 OR customer_id = ?"
                .replace('?', "$2"),
            None,
        )
        .await
        .unwrap();
    let params = prepared.parameter_schema().unwrap().clone();
    assert_eq!(params.fields().len(), 2);
    assert_eq!(prepared.dataset_schema().unwrap().field(1).name(), "region");
    let mut values = Vec::new();
    for n in [3i64, 7] {
        let mut b = Int64Builder::new();
        b.append_value(n);
        values.push(Arc::new(b.finish()) as ArrayRef);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("$1", DataType::Int64, true),
        Field::new("$2", DataType::Int64, true),
    ]));
    prepared
        .set_parameters(RecordBatch::try_new(schema, values).unwrap())
        .unwrap();
    let info = prepared.execute().await.unwrap();
    let mut rows = arrow_rows(&fetch(&mut flight, info).await);
    rows.sort_by_key(|r| match r[0] {
        Value::Int(v) => v,
        _ => 0,
    });
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], Value::Int(3));
    assert_eq!(rows[1][0], Value::Int(7));
    prepared.close().await.unwrap();
}

#[tokio::test]
async fn updates_and_catalog_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut flight = client(&server).await;

    assert_eq!(
        flight
            .execute_update(
                "CREATE TABLE public.scratch AS VALUES (1), (2)".into(),
                None
            )
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        flight
            .execute_update(
                "INSERT INTO public.scratch VALUES (3), (4), (5)".into(),
                None
            )
            .await
            .unwrap(),
        3
    );

    let catalogs = {
        let info = flight.get_catalogs().await.unwrap();
        arrow_rows(&fetch(&mut flight, info).await)
    };
    assert!(catalogs.contains(&vec![Value::Text("demo".into())]));
    assert!(catalogs.contains(&vec![Value::Text("fedsql".into())]));

    let info = flight
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("demo".into()),
            db_schema_filter_pattern: Some("ba%".into()),
        })
        .await
        .unwrap();
    let schemas = arrow_rows(&fetch(&mut flight, info).await);
    assert_eq!(
        schemas,
        vec![vec![Value::Text("demo".into()), Value::Text("bank".into())]]
    );

    let info = flight
        .get_tables(CommandGetTables {
            catalog: Some("demo".into()),
            db_schema_filter_pattern: Some("bank".into()),
            table_name_filter_pattern: Some("cust%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut flight, info).await;
    assert_eq!(tables.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let schema_bytes = tables[0]
        .column_by_name("table_schema")
        .expect("table_schema column")
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&schema_bytes).unwrap();
    assert_eq!(schema.field(0).name(), "customer_id");

    let info = flight.get_table_types().await.unwrap();
    let types = arrow_rows(&fetch(&mut flight, info).await);
    assert!(types.contains(&vec![Value::Text("VIEW".into())]));

    let info = flight
        .get_sql_info(vec![SqlInfo::FlightSqlServerName])
        .await
        .unwrap();
    assert_eq!(
        fetch(&mut flight, info)
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        1
    );
    let info = flight
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    assert!(fetch(&mut flight, info).await[0].num_rows() >= 10);
}

#[tokio::test]
async fn errors_map_to_grpc_codes_with_sqlstate() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut flight = client(&server).await;
    let status = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("not a gRPC status: {other}"),
    };

    let e = status(
        flight
            .execute("SELECT 1 FORM x".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.metadata().get("x-fedsql-sqlstate").unwrap(), "42601");
    assert_eq!(e.metadata().get("x-fedsql-position").unwrap(), "15");

    let e = status(
        flight
            .execute("SELECT * FROM bank.nope".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("bank.nope"), "{}", e.message());

    // Unreachable source: the same 08001 message as the Postgres wire.
    let port = fedsql_tests::free_port();
    let sql = format!(
        "CREATE SOURCE gone TYPE postgres OPTIONS (url 'postgres://u@127.0.0.1:{port}/db')"
    );
    let e = status(flight.execute(sql.clone(), None).await.unwrap_err());
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        e.message()
    );
    let pg = server.connect("demo").await;
    let pg_err = pg.batch_execute(&sql).await.unwrap_err();
    let pg_err = pg_err.as_db_error().expect("a server error");
    assert_eq!(pg_err.message(), e.message());

    // Still serving, and the failures are in the query log.
    assert_eq!(
        arrow_rows(&query(&mut flight, "SELECT 2 AS two").await),
        vec![vec![Value::Int(2)]]
    );
    let logged = pg
        .query(
            "SELECT sqlstate FROM fedsql.system.queries WHERE protocol = 'flight' \
             AND sqlstate IS NOT NULL ORDER BY started_at",
            &[],
        )
        .await
        .unwrap();
    let states: Vec<String> = logged.iter().map(|r| r.get(0)).collect();
    assert_eq!(states, ["42601", "42P01", "08001"]);
}

/// A Flight SQL client gets no NOTICEs: it follows a training run in
/// `fedsql.system.training_rounds`, whose rows appear round by round while
/// `TRAIN MODEL` (sent over Flight SQL too) is still running.
#[tokio::test]
async fn training_rounds_show_while_training_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = FedsqlServer::start(dir.path());
    let mut trainer = client(&server).await;
    let mut watcher = client(&server).await;
    let rounds = 15;
    let train = tokio::spawn(async move {
        trainer
            .execute(
                format!(
                    "TRAIN MODEL watched USING logistic_regression PREDICT is_fraud \
                     FROM (SELECT t.amount, t.channel, c.region, t.is_fraud \
                           FROM demo.bank.transactions t JOIN demo.bank.customers c USING (customer_id)) \
                     FEDERATED BY region WITH (rounds = {rounds}, local_epochs = 1)"
                ),
                None,
            )
            .await
            .map(|_| ())
    });
    let mut seen_partial = None;
    while !train.is_finished() {
        let batches = query(
            &mut watcher,
            "SELECT CAST(count(*) AS BIGINT), CAST(coalesce(max(round), 0) AS BIGINT) \
             FROM fedsql.system.training_rounds WHERE model = 'watched'",
        )
        .await;
        let counts = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let round = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        if counts.value(0) > 0 && round.value(0) < rounds && !train.is_finished() {
            seen_partial = Some(round.value(0));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    train.await.unwrap().expect("TRAIN over Flight SQL");
    let round = seen_partial.expect("no round was visible before training finished");
    assert!((1..rounds).contains(&round), "{round}");
    // Afterwards the saved version's rows, once each: train and evaluate
    // per client per round.
    let batches = query(
        &mut watcher,
        "SELECT CAST(count(*) AS BIGINT), CAST(count(DISTINCT (round, client, phase)) AS BIGINT), \
                CAST(min(version) AS BIGINT) \
         FROM fedsql.system.training_rounds WHERE model = 'watched'",
    )
    .await;
    let col = |i: usize| {
        batches[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(col(0), col(1), "a round row shows twice");
    assert_eq!(col(0) % (2 * rounds), 0, "{} rows", col(0));
    assert_eq!(col(2), 1);
}
