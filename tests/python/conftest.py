"""Starts a real `fedsql serve` for the client tests.

FEDSQL_BIN names the binary under test (scripts/test sets it after cargo build).
"""

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Fedsql:
    proc: subprocess.Popen
    pg_port: int
    flight_port: int
    data_dir: str

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=15)


def start_fedsql(*extra, env=None, data_dir=None):
    """Starts `fedsql serve` on free loopback ports and waits for its banner
    (in `data_dir`, to restart a server on its data, or a new one)."""
    binary = os.environ.get("FEDSQL_BIN")
    assert binary and os.path.exists(binary), (
        "set FEDSQL_BIN to the fedsql binary (scripts/test does this after cargo build)"
    )
    pg_port, flight_port = free_port(), free_port()
    data_dir = data_dir or tempfile.mkdtemp(prefix="fedsql-py-")
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir,
         "--pg-listen", f"127.0.0.1:{pg_port}",
         "--flight-listen", f"127.0.0.1:{flight_port}",
         "--demo-scale", "0.1", *extra],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline = time.time() + 60
    for line in proc.stdout:
        if line.strip().startswith("psql "):
            break
        assert time.time() < deadline, "fedsql did not start"
    assert proc.poll() is None, "fedsql exited during start-up"
    return Fedsql(proc, pg_port, flight_port, data_dir)


@pytest.fixture(scope="module")
def fedsql():
    server = start_fedsql()
    yield server
    assert server.stop() == 0, "fedsql did not shut down cleanly"
