"""Flight SQL throughput: one large result read three ways, in one run.

    fedsql over Flight SQL (pyarrow.flight, every endpoint)
    fedsql over the Postgres wire (psycopg, binary rows, no COPY)
    roapi over its Flight SQL, serving the same Parquet file

Called by bench/flight.sh, which starts the servers; prints a table of
MB/s (Arrow bytes of the result per second) and ratios.
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pyarrow.parquet as pq


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


def statement_query(sql):
    """A Flight SQL CommandStatementQuery wrapped in protobuf Any."""
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return _field(1, type_url) + _field(2, _field(1, sql.encode()))


def make_parquet(path, rows):
    ids = pa.array(range(rows), pa.int64())
    categories = pa.array(["grocery", "travel", "fuel", "online", "dining", "health",
                           "utilities", "entertainment"])
    table = pa.table({
        "id": ids,
        "amount": pc.divide(pc.cast(ids, pa.float64()), 7.0),
        "category": pc.take(categories, pc.cast(pc.bit_wise_and(ids, 7), pa.int32())),
        "ts": pc.cast(pc.multiply(ids, 1_000_000), pa.timestamp("us")),
    })
    pq.write_table(table, path, row_group_size=1_000_000)
    return table.nbytes


def read_endpoint(client, endpoint):
    rows = nbytes = 0
    for chunk in client.do_get(endpoint.ticket):
        rows += chunk.data.num_rows
        nbytes += chunk.data.nbytes
    return rows, nbytes


def read_flight(port, sql):
    """Reads every endpoint concurrently, as ADBC and JDBC drivers do."""
    client = flight.connect(f"grpc://127.0.0.1:{port}")
    start = time.perf_counter()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)))
    with ThreadPoolExecutor(max_workers=max(1, len(info.endpoints))) as pool:
        parts = list(pool.map(lambda e: read_endpoint(client, e), info.endpoints))
    rows = sum(p[0] for p in parts)
    nbytes = sum(p[1] for p in parts)
    return time.perf_counter() - start, rows, nbytes, len(info.endpoints)


def read_pg(port, sql):
    start = time.perf_counter()
    rows = 0
    with psycopg.connect(host="127.0.0.1", port=port, user="fedsql", dbname="fedsql") as conn:
        with conn.cursor(binary=True) as cur:
            cur.execute(sql)
            while batch := cur.fetchmany(100_000):
                rows += len(batch)
    return time.perf_counter() - start, rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--make-parquet")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--fedsql-flight", type=int)
    p.add_argument("--fedsql-pg", type=int)
    p.add_argument("--roapi-flight", type=int)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    if a.make_parquet:
        make_parquet(a.make_parquet, a.rows)
        return

    sql = "SELECT id, amount, category, ts FROM bench"
    results = {}
    for name, port in [("fedsql Flight SQL", a.fedsql_flight), ("roapi Flight SQL", a.roapi_flight)]:
        times = []
        for _ in range(a.runs):
            seconds, rows, nbytes, endpoints = read_flight(port, sql)
            assert rows == a.rows, f"{name}: {rows} rows, expected {a.rows}"
            times.append(seconds)
        results[name] = (statistics.median(times), nbytes)
        print(f"{name}: {endpoints} endpoint(s)")
    arrow_bytes = results["fedsql Flight SQL"][1]
    seconds, rows = read_pg(a.fedsql_pg, sql)
    assert rows == a.rows, f"pg wire: {rows} rows, expected {a.rows}"
    # The pg wire moves the same values; count them at their Arrow size so
    # the MB/s columns compare like with like.
    results["fedsql Postgres wire (psycopg)"] = (seconds, arrow_bytes)

    base_pg = results["fedsql Postgres wire (psycopg)"][0]
    base_roapi = results["roapi Flight SQL"][0]
    print(f"\n{a.rows:,} rows x 4 columns ({arrow_bytes / 1e6:.0f} MB as Arrow); "
          f"median of {a.runs} runs for Flight, 1 for the pg wire\n")
    print(f"{'reader':34} {'seconds':>8} {'MB/s':>8} {'vs pg wire':>11} {'vs roapi':>9}")
    for name, (seconds, nbytes) in results.items():
        print(f"{name:34} {seconds:8.2f} {nbytes / 1e6 / seconds:8.0f} "
              f"{base_pg / seconds:10.1f}x {base_roapi / seconds:8.2f}x")
    print("\ngoals: fedsql Flight SQL >= 5x the pg wire and >= 1x roapi")


if __name__ == "__main__":
    main()
