"""Arrow Flight SQL: the ADBC Flight SQL driver and pyarrow.flight against a
real `fedsql serve`, compared with psycopg over the Postgres wire.

Run by scripts/test in its venv; servers come from conftest.py.
"""

import base64
import datetime
import decimal
import os
import subprocess
import tempfile
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import psycopg
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import start_fedsql


def adbc(server, **kwargs):
    return flightsql.connect(f"grpc://127.0.0.1:{server.flight_port}", **kwargs)


# --- pyarrow.flight speaks raw Flight; Flight SQL commands are protobuf
# messages wrapped in google.protobuf.Any, encoded here by hand. ---

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def flight_sql_command(name, query):
    message = _field(1, query.encode())
    type_url = f"type.googleapis.com/arrow.flight.protocol.sql.{name}".encode()
    return _field(1, type_url) + _field(2, message)


def pyarrow_query(client, sql, options=None):
    """Runs `sql` with CommandStatementQuery and reads every endpoint."""
    descriptor = flight.FlightDescriptor.for_command(
        flight_sql_command("CommandStatementQuery", sql))
    info = client.get_flight_info(descriptor, options)
    tables = [client.do_get(e.ticket, options).read_all() for e in info.endpoints]
    assert tables, "a FlightInfo always has an endpoint"
    return pa.concat_tables(tables), info


# --- ADBC ---

def test_adbc_query_demo_catalog(fedsql):
    sql = "SELECT region, count(*) AS n FROM bank.customers GROUP BY region ORDER BY region"
    with adbc(fedsql) as conn, conn.cursor() as cur:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
    assert table.column_names == ["region", "n"]
    assert sum(table.column("n").to_pylist()) == 2000
    with psycopg.connect(host="127.0.0.1", port=fedsql.pg_port, user="fedsql",
                         dbname="demo") as pg:
        assert [tuple(r.values()) for r in table.to_pylist()] == pg.execute(sql).fetchall()


def test_adbc_get_objects_lists_catalogs_tables_and_columns(fedsql):
    with adbc(fedsql) as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        info = conn.adbc_get_info()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert {"demo", "fedsql"} <= set(catalogs)
    bank = next(s for s in catalogs["demo"]["catalog_db_schemas"] if s["db_schema_name"] == "bank")
    tables = {t["table_name"]: t for t in bank["db_schema_tables"]}
    assert {"customers", "transactions", "support_messages"} <= set(tables)
    columns = [c["column_name"] for c in tables["transactions"]["table_columns"]]
    assert columns[:4] == ["tx_id", "customer_id", "ts", "amount"]
    assert info["vendor_name"] == "fedsql"


def test_adbc_prepared_statement_with_parameters(fedsql):
    with adbc(fedsql) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bank.transactions WHERE amount > ? AND channel = ?",
                    parameters=(100.0, "online"))
        (with_params,) = cur.fetchone()
        cur.execute(
            "SELECT count(*) FROM bank.transactions WHERE amount > 100.0 AND channel = 'online'")
        (literal,) = cur.fetchone()
        assert with_params == literal > 0
        # Postgres-style numbered markers too, and a reused statement.
        for n in (1, 5):
            cur.execute("SELECT customer_id FROM bank.customers WHERE customer_id = $1",
                        parameters=(n,))
            assert cur.fetchall() == [(n,)]


def test_adbc_runs_fedsql_statements(fedsql):
    with adbc(fedsql) as conn, conn.cursor() as cur:
        cur.execute("SHOW SOURCES")
        table = cur.fetch_arrow_table()
        assert table.column_names == ["name", "type", "options", "created_at"]
        cur.execute("CREATE VIEW flight_view AS SELECT 41 + 1 AS answer")
        assert cur.fetchall() == [("CREATE VIEW",)]
        cur.execute("SELECT answer FROM flight_view")
        assert cur.fetchall() == [(42,)]
    # The same view over the Postgres wire: one engine behind both.
    with psycopg.connect(host="127.0.0.1", port=fedsql.pg_port, user="fedsql",
                         dbname="demo") as pg:
        assert pg.execute("SELECT answer FROM flight_view").fetchall() == [(42,)]


def test_adbc_trains_evaluates_and_predicts(fedsql):
    with adbc(fedsql) as conn, conn.cursor() as cur:
        cur.execute(
            "TRAIN MODEL flight_fraud USING logistic_regression PREDICT is_fraud "
            "FROM (SELECT amount, channel, is_fraud, c.region FROM bank.transactions t "
            "JOIN bank.customers c USING (customer_id)) FEDERATED BY region WITH (rounds = 2)")
        trained = cur.fetch_arrow_table().to_pylist()
        assert [(r["model"], r["version"]) for r in trained] == [("flight_fraud", 1)]
        cur.execute("EVALUATE MODEL flight_fraud ON (SELECT amount, channel, is_fraud "
                    "FROM bank.transactions)")
        (evaluation,) = cur.fetch_arrow_table().to_pylist()
        assert evaluation["num_examples"] == 20000
        cur.execute("SELECT avg(CASE WHEN predict('flight_fraud', amount, channel) = is_fraud "
                    "THEN 1.0 ELSE 0.0 END) FROM bank.transactions")
        (accuracy,) = cur.fetchone()
        assert abs(accuracy - evaluation["accuracy"]) < 1e-9


def test_adbc_errors_name_the_problem(fedsql):
    with adbc(fedsql) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError) as syntax:
            cur.execute("SELEC 1")
        assert "INVALID_ARGUMENT" in str(syntax.value)
        assert "syntax error" in str(syntax.value)
        with pytest.raises(adbc_driver_manager.Error) as missing:
            cur.execute("SELECT * FROM bank.nope")
        assert "NOT_FOUND" in str(missing.value)
        assert "bank.nope" in str(missing.value)
        # The connection still works after errors.
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]


# --- pyarrow.flight ---

def test_pyarrow_flight_query_and_metadata(fedsql):
    client = flight.connect(f"grpc://127.0.0.1:{fedsql.flight_port}")
    table, info = pyarrow_query(client, "SELECT * FROM bank.transactions")
    assert table.num_rows == 20000
    assert info.schema.field("amount").type == pa.float64()
    assert info.schema.field("channel").type == pa.string()  # not string_view
    # Endpoints split the scan; together they hold every row exactly once.
    assert len(set(table.column("tx_id").to_pylist())) == 20000

    descriptor = flight.FlightDescriptor.for_command(
        _field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandGetCatalogs")
        + _field(2, b""))
    info = client.get_flight_info(descriptor)
    catalogs = client.do_get(info.endpoints[0].ticket).read_all()
    assert {"demo", "fedsql"} <= set(catalogs.column("catalog_name").to_pylist())


def test_pyarrow_flight_error_is_a_flight_error(fedsql):
    client = flight.connect(f"grpc://127.0.0.1:{fedsql.flight_port}")
    # pyarrow raises INVALID_ARGUMENT as ArrowInvalid and NOT_FOUND as
    # ArrowKeyError; both carry the server's message.
    with pytest.raises(pa.ArrowInvalid) as err:
        pyarrow_query(client, "SELECT 1/0")
    assert "divide by zero" in str(err.value).lower()
    with pytest.raises(pa.ArrowException) as err:
        pyarrow_query(client, "SELECT nope FROM bank.customers")
    assert "nope" in str(err.value)


TYPED_QUERY = """
SELECT * FROM (VALUES
  (1, 'plain', CAST(12.50 AS DECIMAL(10, 2)), 1.5, true,
   arrow_cast('2024-03-01T12:00:00+02:00', 'Timestamp(Microsecond, Some("+00:00"))'),
   CAST('2024-03-01T12:00:00' AS TIMESTAMP), DATE '2024-02-29', make_array(1, 2, 3)),
  (2, 'ünïcødé ✓', CAST(-0.01 AS DECIMAL(10, 2)), -2.25, false,
   arrow_cast('1999-12-31T23:59:59.5-05:00', 'Timestamp(Microsecond, Some("+00:00"))'),
   CAST('1970-01-01T00:00:00' AS TIMESTAMP), DATE '1970-01-01', make_array(4)),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) AS t(id, txt, dec, dbl, flag, tstz, ts, d, ints)
ORDER BY id
"""


def test_flight_results_equal_pg_wire_results(fedsql):
    with adbc(fedsql) as conn, conn.cursor() as cur:
        cur.execute(TYPED_QUERY)
        over_flight = [tuple(r.values()) for r in cur.fetch_arrow_table().to_pylist()]
    with psycopg.connect(host="127.0.0.1", port=fedsql.pg_port, user="fedsql",
                         dbname="demo") as pg:
        over_pg = pg.execute(TYPED_QUERY).fetchall()
    assert len(over_flight) == len(over_pg) == 3
    for f, p in zip(over_flight, over_pg):
        assert f == tuple(p), f"flight {f!r} != pg wire {p!r}"
    # Spot-check that the types are what a client expects, not just equal.
    first = over_flight[0]
    assert first[2] == decimal.Decimal("12.50")
    assert first[5] == datetime.datetime(2024, 3, 1, 10, 0, tzinfo=datetime.timezone.utc)
    assert first[8] == [1, 2, 3]
    assert over_flight[2][1:] == (None,) * 8


# --- authentication and TLS ---

PASSWORD = "flight-secret"


@pytest.fixture(scope="module")
def secured():
    server = start_fedsql("--password-env", "FEDSQL_TEST_FLIGHT_PASSWORD",
                          "--flight-token-ttl-secs", "2",
                          env={"FEDSQL_TEST_FLIGHT_PASSWORD": PASSWORD})
    yield server
    assert server.stop() == 0


def basic_options(client, user, password):
    token = client.authenticate_basic_token(user, password)
    return flight.FlightCallOptions(headers=[token])


def test_auth_rejects_missing_and_wrong_credentials(secured):
    client = flight.connect(f"grpc://127.0.0.1:{secured.flight_port}")
    with pytest.raises(flight.FlightUnauthenticatedError):
        pyarrow_query(client, "SELECT 1")
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("fedsql", "wrong")
    with pytest.raises(flight.FlightUnauthenticatedError):
        pyarrow_query(client, "SELECT 1", flight.FlightCallOptions(
            headers=[(b"authorization", b"Bearer forged")]))


def test_auth_token_works_then_expires(secured):
    client = flight.connect(f"grpc://127.0.0.1:{secured.flight_port}")
    options = basic_options(client, "fedsql", PASSWORD)
    table, _ = pyarrow_query(client, "SELECT 7 AS seven", options)
    assert table.column("seven").to_pylist() == [7]
    time.sleep(3)  # the server was started with a 2 s token lifetime
    with pytest.raises(flight.FlightUnauthenticatedError) as err:
        pyarrow_query(client, "SELECT 7", options)
    assert "expired" in str(err.value)


def test_adbc_with_username_and_password(secured):
    uri = f"grpc://127.0.0.1:{secured.flight_port}"
    with flightsql.connect(uri, db_kwargs={"username": "fedsql", "password": PASSWORD}) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM bank.customers")
            assert cur.fetchone() == (2000,)
    with pytest.raises(adbc_driver_manager.Error):
        with flightsql.connect(uri, db_kwargs={"username": "fedsql", "password": "no"}) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")


def test_the_same_password_opens_the_postgres_wire_with_scram(secured):
    def connect(password):
        return psycopg.connect(host="127.0.0.1", port=secured.pg_port, user="fedsql",
                               dbname="demo", password=password, sslmode="disable")
    with connect(PASSWORD) as conn:
        assert conn.info.backend_pid != 0
        assert conn.execute("SELECT count(*) FROM bank.customers").fetchone() == (2000,)
    with pytest.raises(psycopg.OperationalError) as err:
        connect("wrong")
    assert "password authentication failed" in str(err.value)


def test_non_loopback_without_password_is_refused():
    binary = os.environ["FEDSQL_BIN"]
    out = subprocess.run(
        [binary, "serve", "--data-dir", tempfile.mkdtemp(), "--no-demo",
         "--pg-listen", "127.0.0.1:0", "--flight-listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "without authentication" in out.stderr


def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    server = start_fedsql("--flight-tls-cert", str(cert), "--flight-tls-key", str(key))
    try:
        roots = cert.read_bytes()
        client = flight.connect(f"grpc+tls://localhost:{server.flight_port}",
                                tls_root_certs=roots)
        table, _ = pyarrow_query(client, "SELECT 'over tls' AS s")
        assert table.column("s").to_pylist() == ["over tls"]
        with flightsql.connect(
                f"grpc+tls://localhost:{server.flight_port}",
                db_kwargs={adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value:
                           roots.decode()}) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 AS one")
            assert cur.fetchall() == [(1,)]
        # Plain text against a TLS port fails instead of leaking anything.
        plain = flight.connect(f"grpc://127.0.0.1:{server.flight_port}")
        with pytest.raises(flight.FlightError):
            pyarrow_query(plain, "SELECT 1", flight.FlightCallOptions(timeout=5))
    finally:
        assert server.stop() == 0
