# Shared set-up of the bench/ scripts: the Python venv and the release build.
# Source it from a script that has cd'ed to the repository root.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fedsql-target}"
VENV="${FEDSQL_BENCH_VENV:-$HOME/.cache/fedsql-bench-venv}"
# FEDSQL_BIN: a fedsql binary to measure instead of building one.
FEDSQL="${FEDSQL_BIN:-$CARGO_TARGET_DIR/release/fedsql}"

# bench_venv CHECK PACKAGE...: makes the venv and installs the pinned
# packages unless `python -c CHECK` already succeeds in it.
bench_venv() {
  local check="$1"
  shift
  if ! "$VENV/bin/python" -c "$check" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$@"
  fi
}

# Builds fedsql in release (the first cold build takes ~35 min on 2 cores).
build_release() {
  [ -n "${FEDSQL_BIN:-}" ] || cargo build --release --locked --bin fedsql
}

# start_fedsql WORK PG_PORT FLIGHT_PORT [serve flags…]: starts the release
# fedsql on loopback (data in WORK/fedsql, log in WORK/fedsql.log), adds its
# PID to PIDS and waits until it serves.
start_fedsql() {
  local work="$1" pg="$2" flight="$3"
  shift 3
  "$FEDSQL" serve --data-dir "$work/fedsql" --pg-listen "127.0.0.1:$pg" \
    --flight-listen "127.0.0.1:$flight" "$@" > "$work/fedsql.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    grep -q "^  psql " "$work/fedsql.log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "fedsql did not start; see $work/fedsql.log" >&2
  return 1
}

PGBIN=/usr/lib/postgresql/15/bin
PIDS=()

# start_postgres PORT [SERVER OPTIONS…]: a throw-away PostgreSQL 15 in
# $WORK/pg on loopback PORT (trust authentication, fsync off); the options
# are added to the server's command line ("-c shared_buffers=2GB").
start_postgres() {
  local port="$1"
  shift
  mkdir -p "$WORK/pg"
  chown postgres "$WORK/pg"
  runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 \
    --locale=C.UTF-8 -N >/dev/null
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $WORK/pg -c fsync=off $*" start >/dev/null
}

# start_mariadb PORT [MARIADBD FLAGS…]: a throw-away MariaDB in $WORK/maria
# on loopback PORT (root without a password); waits until it answers.
start_mariadb() {
  local port="$1"
  shift
  mkdir -p "$WORK/maria"
  chown mysql "$WORK/maria"
  mariadb-install-db --no-defaults --user=mysql --datadir="$WORK/maria/data" \
    --auth-root-authentication-method=normal --skip-test-db >/dev/null
  mariadbd --no-defaults --user=mysql --datadir="$WORK/maria/data" --port="$port" \
    --bind-address=127.0.0.1 --socket="$WORK/maria/s.sock" --pid-file="$WORK/maria/pid" \
    --skip-log-bin --character-set-server=utf8mb4 "$@" >"$WORK/maria/log" 2>&1 &
  for _ in $(seq 100); do
    mariadb-admin -h127.0.0.1 -P"$port" -uroot ping >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "MariaDB did not start; see $WORK/maria/log" >&2
  return 1
}

# bench_cleanup: the EXIT trap of the scripts that use $WORK: stops what
# they started (PIDS, PostgreSQL, MariaDB) and removes $WORK.
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  if [ -f "$WORK/maria/pid" ]; then kill "$(cat "$WORK/maria/pid")" 2>/dev/null || true; fi
  sleep 1
  rm -rf "$WORK"
}
