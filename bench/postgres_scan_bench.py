"""Postgres scan throughput: fedsql (Postgres source, read over its Flight
SQL) vs ConnectorX (2 partitions) vs the ADBC PostgreSQL driver, reading the
same table into Arrow.

Called by bench/postgres_scan.sh, which starts Postgres and fedsql.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import connectorx as cx

sys.path.insert(0, str(Path(__file__).parent))
from flight_bench import read_flight  # noqa: E402

SQL = "SELECT id, name, amount, ts FROM t"


def read_adbc(url):
    start = time.perf_counter()
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SQL)
        table = cur.fetch_arrow_table()
    return time.perf_counter() - start, table.num_rows


def read_connectorx(url):
    start = time.perf_counter()
    table = cx.read_sql(url, SQL, return_type="arrow", partition_on="id", partition_num=2)
    return time.perf_counter() - start, table.num_rows


def read_fedsql(port):
    seconds, rows, _, _ = read_flight(port, "SELECT id, name, amount, ts FROM pg.public.t")
    return seconds, rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flight", type=int, required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()

    readers = [
        ("ADBC PostgreSQL driver", lambda: read_adbc(a.url)),
        ("ConnectorX, 2 partitions", lambda: read_connectorx(a.url)),
        ("fedsql (Flight SQL), 2 partitions", lambda: read_fedsql(a.flight)),
    ]
    times = {name: [] for name, _ in readers}
    for _ in range(a.runs):
        for name, read in readers:
            seconds, rows = read()
            assert rows == a.rows, f"{name} read {rows} rows"
            times[name].append(seconds)

    adbc_best = min(times["ADBC PostgreSQL driver"])
    print(f"\n{a.rows:,} rows x (int8, text, float8, timestamptz), best of {a.runs} runs "
          f"(interleaved)\n")
    print("| reader | seconds | rows/s | time vs ADBC (goal for fedsql ≤ 1.0×) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        best = min(ts)
        print(f"| {name} | {best:.2f} (median {statistics.median(ts):.2f}) | "
              f"{a.rows / best / 1e6:.2f} M | {best / adbc_best:.2f}× |")


if __name__ == "__main__":
    main()
