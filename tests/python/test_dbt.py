"""Real dbt-core + dbt-postgres (1.11, from PyPI) against `fedsql serve`:
seed, run (a view and tables), test, build again (dbt swaps rebuilt models
in with ALTER … RENAME and drops the old ones), docs generate, a failing
schema test, and a restart that keeps every materialized model.

scripts/test installs dbt in its own venv and sets FEDSQL_DBT.
"""

import json
import os
import shutil
import subprocess
import tempfile

import psycopg
import pytest

from conftest import start_fedsql

PROJECT = os.path.join(os.path.dirname(__file__), "..", "dbt", "bank")


def dbt(project, *args):
    binary = os.environ.get("FEDSQL_DBT")
    assert binary and os.path.exists(binary), (
        "set FEDSQL_DBT to a dbt with dbt-postgres (scripts/test installs one)")
    return subprocess.run(
        [binary, *args, "--project-dir", project, "--profiles-dir", project],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "DO_NOT_TRACK": "1"})


def query(port, sql):
    with psycopg.connect(host="127.0.0.1", port=port, user="fedsql", dbname="demo") as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture(scope="module")
def project():
    directory = tempfile.mkdtemp(prefix="fedsql-dbt-")
    shutil.copytree(PROJECT, directory, dirs_exist_ok=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def write_profile(project, port):
    with open(os.path.join(project, "profiles.yml"), "w") as f:
        f.write(
            "fedsql:\n  target: dev\n  outputs:\n    dev:\n"
            f"      {{type: postgres, host: 127.0.0.1, port: {port}, user: fedsql, "
            "password: unused, dbname: demo, schema: marts, threads: 2}\n")


def test_dbt_project_runs_tests_rebuilds_and_survives_a_restart(project):
    server = start_fedsql()
    try:
        write_profile(project, server.pg_port)
        for step in (["debug"], ["seed"], ["run"], ["test"]):
            result = dbt(project, *step)
            assert result.returncode == 0, f"dbt {step[0]}:\n{result.stdout}\n{result.stderr}"
        expected_activity = query(server.pg_port, (
            "SELECT c.region, count(*), sum(t.amount) FROM bank.transactions t "
            "JOIN bank.customers c USING (customer_id) GROUP BY 1 ORDER BY 1"))
        assert query(server.pg_port, "SELECT * FROM marts.region_activity ORDER BY 1") \
            == expected_activity
        segments = dict(query(server.pg_port,
                              "SELECT segment, count(*) FROM bank.customers GROUP BY 1"))
        assert query(server.pg_port,
                     "SELECT segment, customers FROM marts.segment_customers ORDER BY 1") == [
            ("business", 0), ("premium", segments["premium"]), ("retail", segments["retail"])]
        # A second build replaces every model (rename swaps, backups dropped).
        result = dbt(project, "build", "--vars", "{min_transactions: 5000}")
        assert result.returncode == 0, result.stdout
        assert "PASS=10" in result.stdout, result.stdout
        busy = query(server.pg_port, "SELECT region FROM marts.busy_regions ORDER BY 1")
        assert busy == [(r,) for r, n, _ in expected_activity if n > 5000]
        tables = {r[0] for r in query(server.pg_port,
                  "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'marts'")}
        assert not any("__dbt" in t for t in tables), tables
        # dbt's catalog query answers from the real catalog.
        result = dbt(project, "docs", "generate")
        assert result.returncode == 0, result.stdout
        with open(os.path.join(project, "target", "catalog.json")) as f:
            catalog = json.load(f)
        assert list(catalog["nodes"]["model.bank.region_activity"]["columns"]) == [
            "region", "transactions", "amount"]
        assert not catalog.get("errors"), catalog.get("errors")
        # A data test that fails (a segment without customers) is reported
        # as failed, exit code 1.
        os.makedirs(os.path.join(project, "tests"), exist_ok=True)
        with open(os.path.join(project, "tests", "every_segment_has_customers.sql"), "w") as f:
            f.write("SELECT * FROM {{ ref('segment_customers') }} WHERE customers = 0\n")
        result = dbt(project, "test", "--select", "every_segment_has_customers")
        assert result.returncode == 1, result.stdout
        assert "FAIL 1 every_segment_has_customers" in result.stdout, result.stdout
    finally:
        assert server.stop() == 0
    # The materialized models outlive the server. A snapshot write that a
    # crash interrupted (its temporary file, half written) leaves the last
    # committed table, and the leftover is removed at start-up.
    tables_dir = os.path.join(server.data_dir, "tables")
    snapshots = [f for f in os.listdir(tables_dir) if f.endswith(".parquet")]
    assert len(snapshots) == 3, snapshots  # segments, segment_customers, busy_regions
    torn = os.path.join(tables_dir, snapshots[0] + ".tmp.99999")
    with open(torn, "wb") as f:
        f.write(b"PAR1 torn write")
    again = start_fedsql(data_dir=server.data_dir)
    try:
        assert query(again.pg_port, "SELECT * FROM marts.region_activity ORDER BY 1") \
            == expected_activity
        assert query(again.pg_port, "SELECT region FROM marts.busy_regions ORDER BY 1") == busy
        assert query(again.pg_port, "SELECT count(*) FROM marts.segments") == [(3,)]
        assert not os.path.exists(torn)
    finally:
        assert again.stop() == 0
