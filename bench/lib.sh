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
