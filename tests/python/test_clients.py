"""psycopg 3 and SQLAlchemy 2 against a real `fedsql serve`.

Run by scripts/test in its venv; the server comes from conftest.py.
"""

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import inspect, text


@pytest.fixture(scope="module")
def server(fedsql):
    return fedsql.pg_port


def test_psycopg_join_and_parameters(server):
    with psycopg.connect(host="127.0.0.1", port=server, user="fedsql", dbname="demo") as conn:
        rows = conn.execute(
            "SELECT c.region, count(*), avg(t.amount) FROM demo.bank.transactions t "
            "JOIN demo.bank.customers c USING (customer_id) GROUP BY 1 ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == ["apac", "eu", "us"]
        assert sum(r[1] for r in rows) == 20000
        # Server-side parameter binding (extended protocol).
        counts = {
            region: conn.execute(
                "SELECT count(*) FROM bank.customers WHERE region = %s AND age >= %s",
                (region, 18)).fetchone()[0]
            for region in ("eu", "us", "apac")
        }
        assert sum(counts.values()) == 2000
        # Prepared statements are reused across executions.
        cur = conn.cursor()
        for region in ("eu", "us"):
            cur.execute("SELECT count(*) FROM bank.customers WHERE region = %s", (region,),
                        prepare=True)
            assert cur.fetchone()[0] == counts[region]


def test_psycopg_errors_carry_sqlstate(server):
    with psycopg.connect(host="127.0.0.1", port=server, user="fedsql", dbname="demo",
                         autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as err:
            conn.execute("SELEC 1")
        assert err.value.diag.sqlstate == "42601"
        assert err.value.diag.statement_position == "1"
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM bank.nope")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("CREATE SOURCE f TYPE flightsql OPTIONS (url 'http://127.0.0.1:1')")
        with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection):
            conn.execute("CREATE SOURCE k TYPE kafka OPTIONS (brokers '127.0.0.1:1')")
        assert conn.execute("SELECT 1 + 1").fetchone()[0] == 2


def test_sqlalchemy_inspect_lists_tables(server):
    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg://fedsql@127.0.0.1:{server}/demo")
    insp = inspect(engine)
    assert "bank" in insp.get_schema_names()
    assert sorted(insp.get_table_names(schema="bank")) == [
        "customers", "support_messages", "transactions"]
    # Column and key reflection: test_pg_clients.py.
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM bank.customers WHERE region = :r"),
                         {"r": "eu"}).scalar_one()
        assert n > 0
    engine.dispose()
