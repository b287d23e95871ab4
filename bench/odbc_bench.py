"""ODBC scan throughput: fedsql (ODBC source, read over its Flight SQL) vs
Python arrow-odbc reading the same query through the same driver.

Called by bench/odbc.sh, which starts the databases and fedsql.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

from arrow_odbc import read_arrow_batches_from_odbc

sys.path.insert(0, str(Path(__file__).parent))
from flight_bench import read_flight  # noqa: E402


def read_arrow_odbc(connection_string, sql, batch_size):
    start = time.perf_counter()
    rows = 0
    reader = read_arrow_batches_from_odbc(
        query=sql,
        connection_string=connection_string,
        batch_size=batch_size,
        max_text_size=4096,
    )
    for batch in reader:
        rows += batch.num_rows
    return time.perf_counter() - start, rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flight", type=int, required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8192)
    # name|fedsql_table|fedsql_split_table|connection_string|remote_sql, one per driver
    p.add_argument("--driver", action="append", required=True)
    a = p.parse_args()

    print(f"{a.rows} rows x (int8, text, float8, timestamp), best of {a.runs} runs\n")
    print(
        f"{'driver':<20} {'arrow-odbc (s)':>15} {'fedsql (s)':>11} {'vs arrow-odbc':>14}"
        f" {'fedsql 2 ranges (s)':>20} {'vs arrow-odbc':>14}"
    )
    for spec in a.driver:
        name, table, split_table, connection_string, remote_sql = spec.split("|", 4)
        peer, ours, split = [], [], []
        for _ in range(a.runs):
            seconds, rows = read_arrow_odbc(connection_string, remote_sql, a.batch_size)
            assert rows == a.rows, f"arrow-odbc read {rows} rows"
            peer.append(seconds)
            for t, times in ((table, ours), (split_table, split)):
                seconds, rows, _, _ = read_flight(a.flight, f"SELECT id, name, amount, ts FROM {t}")
                assert rows == a.rows, f"fedsql read {rows} rows from {t}"
                times.append(seconds)
        best_peer, best_ours, best_split = min(peer), min(ours), min(split)
        print(
            f"{name:<20} {best_peer:>15.2f} {best_ours:>11.2f} {best_peer / best_ours:>13.2f}x"
            f" {best_split:>20.2f} {best_peer / best_split:>13.2f}x"
        )
        print(
            f"{'':<20} (medians: arrow-odbc {statistics.median(peer):.2f} s, fedsql "
            f"{statistics.median(ours):.2f} s, 2 ranges {statistics.median(split):.2f} s)"
        )


if __name__ == "__main__":
    main()
