"""pgjdbc (Debian's libpostgresql-jdbc-java) and node-postgres (`pg` from
npm) against a real `fedsql serve`, each compared with what psycopg reads.

The clients are small programs in tests/clients/; scripts/test installs the
JDK, the driver jar, node and `pg` (NODE_PATH points at it).
"""

import json
import os
import shutil
import subprocess

import psycopg
import pytest

from conftest import start_fedsql

CLIENTS = os.path.join(os.path.dirname(__file__), "..", "clients")
JDBC_JAR = "/usr/share/java/postgresql.jar"


@pytest.fixture(scope="module")
def server():
    server = start_fedsql()
    yield server
    assert server.stop() == 0, "fedsql did not shut down cleanly"


def expected(server, sql, params=()):
    with psycopg.connect(host="127.0.0.1", port=server.pg_port, user="fedsql",
                         dbname="demo") as conn:
        return conn.execute(sql, params).fetchall()


def test_node_postgres(server):
    assert shutil.which("node"), "node is not installed: run scripts/test"
    assert os.environ.get("NODE_PATH"), "NODE_PATH is not set: run scripts/test (it installs pg)"
    out = subprocess.run(["node", os.path.join(CLIENTS, "node_pg.js"), str(server.pg_port)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["simple"] == [list(r) for r in expected(
        server, "SELECT region, count(*) FROM bank.customers GROUP BY region ORDER BY region")]
    assert got["simpleFields"] == ["region", "count"]
    assert got["params"] == [list(r) for r in expected(
        server, "SELECT customer_id, income, region FROM bank.customers "
        "WHERE customer_id BETWEEN 10 AND 12 ORDER BY customer_id")]
    regions = dict(expected(server, "SELECT region, count(*) FROM bank.customers GROUP BY 1"))
    assert (got["eu"], got["us"]) == (regions["eu"], regions["us"])
    assert got["error"] == "42P01"
    assert int(got["after"]) == 2


def test_pgjdbc(server):
    assert shutil.which("java"), "no JDK: run scripts/test (it installs default-jdk-headless)"
    assert os.path.exists(JDBC_JAR), "no pgjdbc: run scripts/test (libpostgresql-jdbc-java)"
    out = subprocess.run(["java", "-cp", JDBC_JAR, os.path.join(CLIENTS, "Jdbc.java"),
                          str(server.pg_port)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    rows = expected(server, "SELECT customer_id, income, region FROM bank.customers "
                    "WHERE customer_id <= 3 ORDER BY customer_id")
    assert lines["rows"] == " ".join(f"{a},{float(b)},{c}" for a, b, c in rows)
    assert lines["paged"] == f"5000 {sum(range(1, 5001))}"
    assert lines["tables"] == "customers,support_messages,transactions"
    columns = [c.split(":") for c in lines["columns"].split(",")]
    assert [c[0] for c in columns] == [
        "customer_id", "region", "age", "income", "tenure_months", "credit_score", "segment"]
    assert dict(columns)["income"] == "float8"
    assert lines["error"] == "42P01"
