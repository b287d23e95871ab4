# Shared set-up of the bench/ scripts: the Python venv and the release build.
# Source it from a script that has cd'ed to the repository root.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fedsql-target}"
VENV="${FEDSQL_BENCH_VENV:-$HOME/.cache/fedsql-bench-venv}"
FEDSQL="$CARGO_TARGET_DIR/release/fedsql"

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
  cargo build --release --locked --bin fedsql
}
