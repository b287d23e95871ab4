#!/usr/bin/env bash
# ODBC scan throughput: 1M rows x (int8, text, float8, timestamp) read from
# MariaDB (MariaDB Connector/ODBC) and PostgreSQL (psqlODBC) through a fedsql
# ODBC source, read back over fedsql's Flight SQL, vs Python arrow-odbc
# reading the same query with the same driver; one run, one table. fedsql
# reads it once as one fetch and once as 2 key ranges fetched in parallel
# (the source's `partitions` option).
#
#   bench/odbc.sh [ROWS]      (default 1000000)
#
# Needs the Debian packages scripts/test installs (unixodbc, odbc-postgresql,
# odbc-mariadb, mariadb-server, postgresql). Builds fedsql in release,
# installs arrow-odbc and pyarrow from PyPI into the bench venv, starts
# throw-away MariaDB and PostgreSQL servers and fedsql on loopback ports
# 55460-55463 and stops them when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
. bench/lib.sh
bench_venv 'import pyarrow.flight, psycopg, arrow_odbc' \
  "pyarrow==26.0.1" "psycopg[binary]==3.3.9" "arrow-odbc==10.6.2"
build_release

WORK="$(mktemp -d /tmp/fedsql-odbc-bench.XXXXXX)"
chmod 755 "$WORK"
PG_PORT=55460 MARIA_PORT=55461
trap bench_cleanup EXIT

echo "starting PostgreSQL and MariaDB, loading $ROWS rows into each"
start_postgres "$PG_PORT"
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c \
  "CREATE TABLE t (id int8 PRIMARY KEY, name text, amount float8, ts timestamp);
   INSERT INTO t SELECT i, 'customer-' || i, i * 0.25, timestamp '2024-01-01' + i * interval '1 second'
   FROM generate_series(1, $ROWS) i;" -c "VACUUM ANALYZE t"
start_mariadb "$MARIA_PORT"
mariadb -h127.0.0.1 -P"$MARIA_PORT" -uroot -e \
  "CREATE DATABASE bench; CREATE TABLE bench.t (id BIGINT PRIMARY KEY, name VARCHAR(40), amount DOUBLE, ts DATETIME(6));
   USE bench; INSERT INTO bench.t SELECT seq, CONCAT('customer-', seq), seq * 0.25, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND
   FROM seq_1_to_$ROWS;"

MARIA_ODBC="Driver={MariaDB Unicode};Server=127.0.0.1;Port=$MARIA_PORT;Database=bench;Uid=root;Pwd=;"
PG_ODBC="Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=$PG_PORT;Database=postgres;Uid=postgres;Pwd=;"

start_fedsql "$WORK" 55462 55463 --no-demo
psql -q -h 127.0.0.1 -p 55462 -U fedsql -d fedsql \
  -c "CREATE SOURCE mdb TYPE odbc OPTIONS (connection_string '$MARIA_ODBC')" \
  -c "CREATE SOURCE pgo TYPE odbc OPTIONS (connection_string '$PG_ODBC')" \
  -c "CREATE SOURCE mdb2 TYPE odbc OPTIONS (connection_string '$MARIA_ODBC', partitions '2')" \
  -c "CREATE SOURCE pgo2 TYPE odbc OPTIONS (connection_string '$PG_ODBC', partitions '2')"

"$VENV/bin/python" bench/odbc_bench.py --flight 55463 --rows "$ROWS" \
  --driver "MariaDB Unicode|mdb.bench.t|mdb2.bench.t|$MARIA_ODBC|SELECT id, name, amount, ts FROM t" \
  --driver "PostgreSQL Unicode|pgo.public.t|pgo2.public.t|$PG_ODBC|SELECT id, name, amount, ts FROM t"
