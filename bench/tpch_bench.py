"""TPC-H: PostgreSQL alone vs fedsql (all tables in a Postgres source) vs
fedsql (split between Postgres and MariaDB over ODBC), 22 queries, one run.

Called by bench/tpch.sh, which loads the data and starts the databases. This
script starts fedsql itself, because a query over the 60 s cap is stopped by
restarting fedsql (a client going away does not cancel a running query).
Prints per-query seconds, ratios to Postgres, and whether each fedsql answer
equals Postgres's.
"""

import argparse
import decimal
import re
import subprocess
import threading
import time
from pathlib import Path

import psycopg

CAP = 60.0
TPCH = Path(__file__).resolve().parent.parent / "tests" / "tpch"
TABLES = ["region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]
IN_POSTGRES = {"orders", "lineitem"}


def qualify_split(sql):
    """Qualifies table names (words after FROM, JOIN or a comma, outside
    string literals) with the source that holds them in the split."""
    out, previous, pos = [], "", 0
    for m in re.finditer(r"'[^']*'|[A-Za-z_][A-Za-z0-9_]*|[^\sA-Za-z_']", sql):
        out.append(sql[pos:m.start()])
        token = m.group(0)
        lower = token.lower()
        if previous in ("from", "join", ",") and lower in TABLES:
            source = "pg.public" if lower in IN_POSTGRES else "wh.tpch_wh"
            token = f"{source}.{lower}"
        out.append(token)
        previous = lower
        pos = m.end()
    out.append(sql[pos:])
    return "".join(out)


class Fedsql:
    """A release fedsql serving on loopback, restartable."""

    def __init__(self, binary, work, pg_port, flight_port):
        self.args = [binary, "serve", "--data-dir", f"{work}/fedsql", "--no-demo",
                     "--pg-listen", f"127.0.0.1:{pg_port}",
                     "--flight-listen", f"127.0.0.1:{flight_port}"]
        self.log = Path(work) / "fedsql.log"
        self.pg_port = pg_port
        self.process = None

    def start(self):
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(600):
            if "  psql " in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise SystemExit(f"fedsql did not start; see {self.log}")

    def restart(self):
        self.process.kill()
        self.process.wait()
        self.log.write_text("")
        self.start()

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait()

    def connect(self, database):
        return psycopg.connect(f"host=127.0.0.1 port={self.pg_port} user=fedsql dbname={database}",
                               autocommit=True)


def timed(connect, sql):
    """Runs sql on a fresh connection; (seconds, rows) or (None, error)."""
    result = {}

    def run():
        try:
            with connect() as conn:
                start = time.perf_counter()
                rows = conn.execute(sql).fetchall()
                result["ok"] = (time.perf_counter() - start, rows)
        except Exception as e:  # noqa: BLE001 - reported in the table
            result["error"] = str(e).splitlines()[0]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CAP)
    if thread.is_alive():
        return None, "capped"
    if "error" in result:
        return None, result["error"]
    return result["ok"]


def same(a, b):
    if a is None or b is None:
        return a is b
    if isinstance(a, (int, float, decimal.Decimal)) and isinstance(b, (int, float, decimal.Decimal)):
        x, y = float(a), float(b)
        return abs(x - y) <= 1e-9 * max(abs(x), abs(y)) + 1e-4
    if isinstance(a, str) and isinstance(b, str):
        return a.rstrip() == b.rstrip()
    return a == b


def check(want, got):
    if want is None:
        return "unchecked"
    if len(want) != len(got):
        return f"WRONG ({len(got)} rows, want {len(want)})"
    for w, g in zip(want, got):
        if len(w) != len(g) or not all(same(a, b) for a, b in zip(w, g)):
            return f"WRONG ({g} vs {w})"
    return "ok"


def rows_moved(fedsql, lo, hi, scale, inlist_max=None):
    """Split queries with DataFusion's dynamic join filters off, then on
    (and, with `inlist_max`, on with build-side key lists of up to that many
    values instead of DataFusion's default): rows the sources sent
    (fedsql.system.queries) and seconds."""
    def moved(conn):
        return conn.execute(
            "SELECT coalesce(sum(rows), 0) FROM fedsql.system.queries WHERE protocol = 'source'"
        ).fetchone()[0]

    # fedsql's sessions default to lists of 10,000 keys; "on" is DataFusion's
    # own default of 150.
    runs = [("off", ["SET datafusion.optimizer.enable_join_dynamic_filter_pushdown = false"]),
            ("on", ["SET datafusion.optimizer.enable_join_dynamic_filter_pushdown = true",
                    "SET datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values = 150"])]
    if inlist_max:
        runs.append((f"on, lists ≤ {inlist_max}", [
            "SET datafusion.optimizer.enable_join_dynamic_filter_pushdown = true",
            f"SET datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values = {inlist_max}",
        ]))
    print(f"TPC-H SF{scale} split, rows read from the sources and seconds, dynamic join filters\n")
    print("| query | " + " | ".join(f"rows, {name}" for name, _ in runs) + " | "
          + " | ".join(f"s, {name}" for name, _ in runs) + " |")
    print("|---|" + "---|" * (2 * len(runs)))
    totals = [0.0] * (2 * len(runs))
    for n in range(lo, hi + 1):
        sql = qualify_split((TPCH / f"q{n}.sql").read_text())
        rows, secs = [], []
        for _, settings in runs:
            with fedsql.connect("fedsql") as conn:
                for setting in settings:
                    conn.execute(setting)
                before = moved(conn)
                start = time.perf_counter()
                conn.execute(sql).fetchall()
                secs.append(time.perf_counter() - start)
                rows.append(moved(conn) - before)
        totals = [t + v for t, v in zip(totals, rows + secs)]
        print(f"| q{n} | " + " | ".join(str(r) for r in rows) + " | "
              + " | ".join(f"{x:.2f}" for x in secs) + " |", flush=True)
    k = len(runs)
    print("| **total** | " + " | ".join(f"**{int(t)}**" for t in totals[:k]) + " | "
          + " | ".join(f"**{t:.1f}**" for t in totals[k:]) + " |")
    off = max(totals[0], 1)
    print("\nrows vs filters off: " + ", ".join(
        f"{name} {totals[i] / off:.2f}" for i, (name, _) in enumerate(runs)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fedsql", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--fedsql-pg", type=int, required=True)
    p.add_argument("--fedsql-flight", type=int, required=True)
    p.add_argument("--postgres", required=True, help="libpq conninfo of the all-tables database")
    p.add_argument("--source", action="append", required=True, help="name|CREATE SOURCE …")
    p.add_argument("--scale", default="1")
    p.add_argument("--queries", default="1-22")
    p.add_argument("--rows-moved", action="store_true",
                   help="split only: rows read from the sources with DataFusion's dynamic "
                        "join filters off and on (fedsql narrows remote scans with them)")
    p.add_argument("--inlist-max", type=int,
                   help="with --rows-moved: also run with build-side key lists of up to "
                        "this many values (the 'on' run uses DataFusion's 150)")
    a = p.parse_args()
    lo, hi = (int(x) for x in a.queries.split("-"))

    fedsql = Fedsql(a.fedsql, a.work, a.fedsql_pg, a.fedsql_flight)
    fedsql.start()
    try:
        with fedsql.connect("fedsql") as conn:
            for spec in a.source:
                conn.execute(spec.split("|", 1)[1])

        if a.rows_moved:
            rows_moved(fedsql, lo, hi, a.scale, a.inlist_max)
            return

        def pg_connect():
            conn = psycopg.connect(a.postgres, autocommit=True)
            conn.execute(f"SET statement_timeout = '{int(CAP)}s'")
            return conn

        systems = [
            ("fedsql, all in Postgres", lambda: fedsql.connect("tpch"), lambda s: s),
            ("fedsql, split PG + MariaDB", lambda: fedsql.connect("fedsql"), qualify_split),
        ]
        totals = {"postgres": 0.0}
        totals.update({name: 0.0 for name, _, _ in systems})
        lines = []
        for n in range(lo, hi + 1):
            sql = (TPCH / f"q{n}.sql").read_text()
            pg_s, pg_rows = timed(pg_connect, sql)
            want = pg_rows if pg_s is not None else None
            pg_cell = f"{pg_s:.2f}" if pg_s is not None else f"{pg_rows[:20]} ({CAP:.0f})"
            totals["postgres"] += pg_s if pg_s is not None else CAP
            cells = [f"q{n}", pg_cell]
            for name, connect, rewrite in systems:
                seconds, rows = timed(connect, rewrite(sql))
                if seconds is None:
                    if rows == "capped":
                        fedsql.restart()
                    totals[name] += CAP
                    cells += [f"{rows[:40]} ({CAP:.0f})", "", ""]
                    continue
                totals[name] += seconds
                base = pg_s if pg_s is not None else CAP
                cells += [f"{seconds:.2f}", f"{seconds / base:.2f}", check(want, rows)]
            lines.append(cells)
            print(" | ".join(cells), flush=True)

        print(f"\nTPC-H SF{a.scale}, seconds per query (cap {CAP:.0f} s, counted as {CAP:.0f} s)\n")
        header = ["query", "PostgreSQL"]
        for name, _, _ in systems:
            header += [name, "÷ PG", "answer"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
        total = ["**total**", f"**{totals['postgres']:.1f}**"]
        for name, _, _ in systems:
            total += [f"**{totals[name]:.1f}**", f"**{totals[name] / totals['postgres']:.2f}**", ""]
        print("| " + " | ".join(total) + " |")
    finally:
        fedsql.stop()


if __name__ == "__main__":
    main()
