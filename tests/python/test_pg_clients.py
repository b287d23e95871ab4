"""The Postgres-wire clients people pick, against a real `fedsql serve`:
psycopg 3 server-side cursors and COPY, psycopg2, asyncpg, connectorx,
polars and pandas. Every test compares values with the same query run
through a plain client-side cursor.
"""

import asyncio

import asyncpg
import connectorx as cx
import pandas as pd
import polars as pl
import psycopg
import psycopg2
import pytest
import sqlalchemy

from conftest import start_fedsql

BIG = "SELECT value AS n, value * 2 AS twice, 'r' || value AS label FROM generate_series(1, 100000)"
DEMO = ("SELECT customer_id, region, income, age FROM bank.customers "
        "WHERE customer_id > %s ORDER BY customer_id")


@pytest.fixture(scope="module")
def server():
    server = start_fedsql()
    yield server
    assert server.stop() == 0, "fedsql did not shut down cleanly"


def dsn(server):
    return f"postgresql://fedsql@127.0.0.1:{server.pg_port}/demo"


def test_psycopg_server_side_cursor_pages_equal_the_full_query(server):
    with psycopg.connect(dsn(server)) as conn:
        full = conn.execute(BIG + " ORDER BY n").fetchall()
        assert len(full) == 100000
        for binary in (False, True):
            with conn.cursor(name=f"big_{binary}", binary=binary) as cur:
                cur.itersize = 7000
                cur.execute(BIG + " ORDER BY n")
                assert [d.name for d in cur.description] == ["n", "twice", "label"]
                first = cur.fetchmany(1234)
                assert first == full[:1234]
                rest = list(cur)
                assert first + rest == full


def test_psycopg_server_side_cursor_parameters_scroll_and_errors(server):
    with psycopg.connect(dsn(server)) as conn:
        expected = conn.execute(DEMO, (1990,)).fetchall()
        assert len(expected) == 10
        with conn.cursor(name="demo") as cur:
            cur.execute(DEMO, (1990,))
            assert cur.fetchone() == expected[0]
            cur.scroll(2)  # MOVE 2: skips rows 2 and 3
            assert cur.fetchone() == expected[3]
            cur.scroll(7, mode="absolute")
            assert cur.fetchone() == expected[7]
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                cur.scroll(-1)
        conn.rollback()
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("FETCH 1 FROM never_declared")
        conn.rollback()
        conn.execute("DECLARE twice CURSOR FOR SELECT 1")
        with pytest.raises(psycopg.errors.DuplicateCursor):
            conn.execute("DECLARE twice CURSOR FOR SELECT 2")
        conn.rollback()
        # The server keeps serving the connection.
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


def test_cursors_close_with_their_transaction_unless_held(server):
    with psycopg.connect(dsn(server)) as conn:
        conn.execute("DECLARE held CURSOR WITH HOLD FOR SELECT value FROM generate_series(1, 5)")
        conn.execute("DECLARE scoped CURSOR FOR SELECT 1")
        conn.commit()
        assert conn.execute("FETCH 2 FROM held").fetchall() == [(1,), (2,)]
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("FETCH 1 FROM scoped")
        conn.rollback()
        assert conn.execute("FETCH ALL FROM held").fetchall() == [(3,), (4,), (5,)]
        conn.execute("CLOSE held")
        with pytest.raises(psycopg.errors.InvalidCursorName):
            conn.execute("CLOSE held")


def test_psycopg_copy_out_text_csv_and_binary_equal_the_select(server):
    query = ("SELECT customer_id, region, income, NULLIF(segment, 'retail') AS segment "
             "FROM bank.customers ORDER BY customer_id")
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
        assert any(r[3] is None for r in rows) and any(r[3] is not None for r in rows)
        cur = conn.cursor()
        with cur.copy(f"COPY ({query}) TO STDOUT") as copy:
            text = b"".join(bytes(b) for b in copy).decode()
        def parse(fields, null):
            a, b, c, d = fields
            return (int(a), b, float(c), None if d == null else d)

        assert [parse(line.split("\t"), "\\N") for line in text.splitlines()] == rows
        # Floats are in Postgres's text form, as a text-format SELECT sends them.
        assert "\t110526\t" in text and "110526.0" not in text
        assert cur.rowcount == len(rows)
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)") as copy:
            csv = b"".join(bytes(b) for b in copy).decode().splitlines()
        assert csv[0] == "customer_id,region,income,segment"
        assert [parse(line.split(","), "") for line in csv[1:]] == rows
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int8", "text", "float8", "text"])
            assert list(copy.rows()) == rows
        # An empty result is still valid PGCOPY.
        with cur.copy("COPY (SELECT 1::int8 AS x WHERE false) TO STDOUT BINARY") as copy:
            copy.set_types(["int8"])
            assert list(copy.rows()) == []
        with cur.copy("COPY bank.customers (customer_id, region) TO STDOUT WITH CSV") as copy:
            lines = b"".join(bytes(b) for b in copy).decode().splitlines()
        assert sorted(lines) == sorted(f"{r[0]},{r[1]}" for r in rows)
        with pytest.raises(psycopg.errors.UndefinedTable):
            with cur.copy("COPY (SELECT * FROM bank.nope) TO STDOUT") as copy:
                pass
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg2_named_cursor(server):
    conn = psycopg2.connect(dsn(server))
    try:
        plain = conn.cursor()
        plain.execute(DEMO, (1900,))
        expected = plain.fetchall()
        named = conn.cursor(name="pg2")
        named.itersize = 17
        named.execute(DEMO, (1900,))
        assert named.fetchmany(5) == expected[:5]
        assert list(named) == expected[5:]
        named.close()
        conn.commit()
    finally:
        conn.close()


def test_asyncpg_fetch_and_cursor(server):

    async def run():
        conn = await asyncpg.connect(dsn(server))
        try:
            query = DEMO.replace("%s", "$1")
            rows = await conn.fetch(query, 1950)
            async with conn.transaction():
                streamed = [r async for r in conn.cursor(query, 1950, prefetch=7)]
            return [tuple(r) for r in rows], [tuple(r) for r in streamed]
        finally:
            await conn.close()

    rows, streamed = asyncio.run(run())
    assert len(rows) == 50
    assert streamed == rows


def test_connectorx_every_protocol_and_polars(server):
    query = "SELECT customer_id, region, income FROM bank.customers ORDER BY customer_id"
    with psycopg.connect(dsn(server)) as conn:
        expected = conn.execute(query).fetchall()
    for protocol in ("binary", "csv", "cursor"):
        table = cx.read_sql(f"{dsn(server)}?cxprotocol={protocol}", query, return_type="arrow")
        got = list(zip(*(table.column(i).to_pylist() for i in range(3))))
        assert got == expected, protocol
    frame = pl.read_database_uri(query, dsn(server))
    assert frame.columns == ["customer_id", "region", "income"]
    assert list(frame.iter_rows()) == expected


def test_pandas_chunked_read_over_a_server_side_cursor(server):
    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg://fedsql@127.0.0.1:{server.pg_port}/demo")
    query = sqlalchemy.text(
        "SELECT customer_id, region FROM bank.customers ORDER BY customer_id")
    with engine.connect() as conn:
        whole = pd.read_sql(query, conn)
    with engine.connect().execution_options(stream_results=True, max_row_buffer=300) as conn:
        chunks = list(pd.read_sql(query, conn, chunksize=300))
    engine.dispose()
    assert len(chunks) == 7
    assert pd.concat(chunks, ignore_index=True).equals(whole)


def test_adbc_postgresql_driver(server):
    import adbc_driver_postgresql.dbapi as adbc

    with psycopg.connect(dsn(server)) as conn:
        expected = conn.execute(DEMO, (1995,)).fetchall()
    with adbc.connect(dsn(server)) as conn, conn.cursor() as cur:
        cur.execute(DEMO.replace("%s", "$1"), parameters=(1995,))
        table = cur.fetch_arrow_table()
        assert table.column_names == ["customer_id", "region", "income", "age"]
        assert list(zip(*(c.to_pylist() for c in table.columns))) == expected
        objects = conn.adbc_get_objects(depth="tables", catalog_filter="demo").read_all()
        schemas = objects.to_pylist()[0]["catalog_db_schemas"]
        bank = next(s for s in schemas if s["db_schema_name"] == "bank")
        assert sorted(t["table_name"] for t in bank["db_schema_tables"]) == [
            "customers", "support_messages", "transactions"]


def test_sqlalchemy_reflects_columns_and_keys(server):
    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg://fedsql@127.0.0.1:{server.pg_port}/demo")
    insp = sqlalchemy.inspect(engine)
    columns = insp.get_columns("customers", schema="bank")
    with psycopg.connect(dsn(server)) as conn:
        names = [d.name for d in conn.execute("SELECT * FROM bank.customers LIMIT 0").description]
    assert [c["name"] for c in columns] == names
    types = {c["name"]: type(c["type"]).__name__ for c in columns}
    assert types["customer_id"] == "BIGINT" and types["income"] == "DOUBLE_PRECISION"
    assert types["region"] == "TEXT"
    assert insp.get_pk_constraint("customers", schema="bank")["constrained_columns"] == []
    assert insp.get_indexes("customers", schema="bank") == []
    table = sqlalchemy.Table("transactions", sqlalchemy.MetaData(), schema="bank",
                             autoload_with=engine)
    assert "amount" in table.columns
    with engine.connect() as conn:
        n = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(table)).scalar_one()
    assert n == 20000
    engine.dispose()


def test_text_array_parameters_with_quoted_elements(server):
    # ADBC PostgreSQL binds arrays as `{"p", "r"}`; Postgres reads the
    # quotes and spaces as syntax, not as part of the values.
    query = ("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
             "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = ANY(%s) ORDER BY 1")
    with psycopg.connect(dsn(server)) as conn:
        for text in ('{r,v}', '{"r","v"}', '{"r", "v"}'):
            assert conn.execute(query, ("bank", text)).fetchall() == [
                ("customers",), ("support_messages",), ("transactions",)], text


def test_session_settings(server):
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        assert conn.execute("SHOW server_version_num").fetchone() == ("160006",)
        assert conn.execute("SELECT current_setting('server_version_num')").fetchone() == ("160006",)
        assert conn.execute("SELECT current_setting('max_identifier_length')").fetchone() == ("63",)
        assert conn.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        assert conn.execute("SELECT current_setting('no.such', true)").fetchone() == (None,)
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT current_setting('no_such_setting')")
        assert conn.info.server_version >= 160000
