"""A generated 50-model project, run by `fedsql run` and by real dbt-core
(dbt-postgres against `fedsql serve`), one run each, side by side.

The project: 5 root models over the demo bank (per-region, per-channel,
per-segment aggregates), then 45 models in chains and fans, each reading one
or two earlier models; every third model is a table, the rest views.

Called by bench/dbt_run.sh, which starts fedsql for dbt and passes the
binaries.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOTS = [
    "SELECT c.region, t.channel, count(*) AS n, sum(t.amount) AS amount "
    "FROM bank.transactions t JOIN bank.customers c USING (customer_id) GROUP BY c.region, t.channel",
    "SELECT t.merchant_category AS region, t.channel, count(*) AS n, sum(t.amount) AS amount "
    "FROM bank.transactions t GROUP BY t.merchant_category, t.channel",
    "SELECT c.segment AS region, 'all' AS channel, count(*) AS n, sum(c.income) AS amount "
    "FROM bank.customers c GROUP BY c.segment",
    "SELECT c.region, c.segment AS channel, count(*) AS n, avg(c.credit_score) AS amount "
    "FROM bank.customers c GROUP BY c.region, c.segment",
    "SELECT c.region, t.merchant_category AS channel, count(*) AS n, max(t.amount) AS amount "
    "FROM bank.transactions t JOIN bank.customers c USING (customer_id) "
    "WHERE t.is_fraud GROUP BY c.region, t.merchant_category",
]


def generate(project, models):
    (project / "models").mkdir(parents=True, exist_ok=True)
    for i in range(models):
        materialized = "table" if i % 3 == 0 else "view"
        head = f"{{{{ config(materialized='{materialized}') }}}}\n"
        if i < len(ROOTS):
            body = ROOTS[i]
        else:
            # A chain (the previous model) and a fan (one of the roots, or
            # a model further back).
            a, b = i - 1, (i * 7) % (i - 1)
            body = (
                f"SELECT x.region, x.channel, x.n + coalesce(y.n, 0) AS n, x.amount AS amount\n"
                f"FROM {{{{ ref('m{a:02}') }}}} x LEFT JOIN "
                f"(SELECT region, sum(n) AS n FROM {{{{ ref('m{b:02}') }}}} GROUP BY region) y "
                f"ON x.region = y.region"
            )
        (project / "models" / f"m{i:02}.sql").write_text(head + body + "\n")
    (project / "fedsql_project.toml").write_text(
        'name = "bench"\ndatabase = "demo"\nschema = "bench"\nthreads = 4\n')
    (project / "dbt_project.yml").write_text(
        "name: bench\nversion: '1.0'\nconfig-version: 2\nprofile: fedsql\n"
        "model-paths: [models]\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fedsql", required=True)
    p.add_argument("--dbt", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--models", type=int, default=50)
    a = p.parse_args()
    work = Path(a.work)
    native, for_dbt = work / "native", work / "dbt"
    generate(native, a.models)
    generate(for_dbt, a.models)
    (for_dbt / "profiles.yml").write_text(
        "fedsql:\n  target: dev\n  outputs:\n    dev:\n"
        f"      {{type: postgres, host: 127.0.0.1, port: {a.pg_port}, user: fedsql, "
        "password: unused, dbname: demo, schema: bench, threads: 4}\n")

    # fedsql run on a data dir whose demo catalog already exists (so the
    # time is the project's, not the demo's first generation).
    data = work / "native-data"
    subprocess.run([a.fedsql, "query", "--data-dir", data, "SELECT 1"], check=True,
                   capture_output=True)
    started = time.perf_counter()
    native_run = subprocess.run([a.fedsql, "run", native, "--data-dir", data],
                                capture_output=True, text=True)
    native_seconds = time.perf_counter() - started
    if native_run.returncode != 0:
        print(native_run.stdout[-3000:], native_run.stderr[-3000:], file=sys.stderr)
        raise SystemExit("fedsql run failed")

    env = dict(os.environ, DO_NOT_TRACK="1")
    started = time.perf_counter()
    dbt_run = subprocess.run(
        [a.dbt, "run", "--project-dir", for_dbt, "--profiles-dir", for_dbt],
        capture_output=True, text=True, env=env)
    dbt_seconds = time.perf_counter() - started
    if dbt_run.returncode != 0:
        print(dbt_run.stdout[-3000:], dbt_run.stderr[-3000:], file=sys.stderr)
        raise SystemExit("dbt run failed")

    print(f"\n{a.models} models (chains and fans of views and tables over the demo bank), "
          "4 threads, one run each\n")
    print(f"{'runner':56} {'seconds':>8} {'vs dbt':>8}")
    for name, seconds in [
        ("dbt-core 1.11 + dbt-postgres against fedsql serve", dbt_seconds),
        ("fedsql run (embedded engine, same data)", native_seconds),
    ]:
        print(f"{name:56} {seconds:8.2f} {seconds / dbt_seconds:7.2f}x")
    print("goal: fedsql run <= 0.3x dbt's time")


if __name__ == "__main__":
    main()
