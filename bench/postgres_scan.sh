#!/usr/bin/env bash
# Postgres scan throughput: 1M rows x (int8, text, float8, timestamptz) read
# from a PostgreSQL table into Arrow on the client, three ways in one run:
# through a fedsql Postgres source (fedsql's Flight SQL, every endpoint),
# ConnectorX with 2 partitions, and the ADBC PostgreSQL driver (libpq COPY)
# reading Postgres directly.
#
#   bench/postgres_scan.sh [ROWS]      (default 1000000)
#
# Needs PostgreSQL 15 (Debian: postgresql; scripts/test installs it). Builds
# fedsql in release, installs pyarrow, connectorx and adbc-driver-postgresql
# from PyPI into the bench venv, starts a throw-away PostgreSQL and fedsql on
# loopback ports 55480-55482 and stops them when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"
. bench/lib.sh
bench_venv 'import pyarrow.flight, psycopg, connectorx, adbc_driver_postgresql.dbapi' \
  "pyarrow==26.0.1" "psycopg[binary]==3.3.9" "connectorx==0.4.6" \
  "adbc-driver-manager==1.13.0" "adbc-driver-postgresql==1.13.0"
build_release

WORK="$(mktemp -d /tmp/fedsql-pgscan-bench.XXXXXX)"
chmod 755 "$WORK"
PG_PORT=55480
trap bench_cleanup EXIT

echo "starting PostgreSQL, loading $ROWS rows"
start_postgres "$PG_PORT" -c shared_buffers=1GB
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c \
  "CREATE TABLE t (id int8 PRIMARY KEY, name text, amount float8, ts timestamptz);
   INSERT INTO t SELECT i, 'customer-' || i, i * 0.25, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'
   FROM generate_series(1, $ROWS) i;" -c "VACUUM ANALYZE t"

start_fedsql "$WORK" 55481 55482 --no-demo
psql -q -h 127.0.0.1 -p 55481 -U fedsql -d fedsql \
  -c "CREATE SOURCE pg TYPE postgres OPTIONS (url 'postgres://postgres@127.0.0.1:$PG_PORT/postgres', partitions 2)"

"$VENV/bin/python" bench/postgres_scan_bench.py --flight 55482 --rows "$ROWS" \
  --url "postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
