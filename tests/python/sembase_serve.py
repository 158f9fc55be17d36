"""Starting `sembase serve` for the Python tests: one process on a loopback port, its
address read from the `listening on ...` line, stopped with SIGTERM (which must exit 0)."""
import collections
import contextlib
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SEMBASE = Path(os.environ.get("SEMBASE_BIN", REPO_ROOT / "target" / "release" / "sembase"))


def require_sembase():
    """Fails the test (not skips it) when the binary has not been built."""
    if not SEMBASE.exists():
        pytest.fail(f"{SEMBASE} not found: run `cargo build --release -p sembase-cli` first")


def run_cli(*args):
    """Runs `sembase ARGS...`, failing the test with its stderr when it fails."""
    done = subprocess.run([str(SEMBASE), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"sembase {' '.join(args)} failed:\n{done.stderr}"


@contextlib.contextmanager
def serve(sembase, *args):
    """Runs `sembase serve --port 0 ARGS...` and yields its base URL."""
    if not sembase.exists():
        pytest.fail(f"{sembase} not found: run `cargo build --release -p sembase-cli` first")
    proc = subprocess.Popen(
        [str(sembase), "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    # The server logs a line per request on stderr: read it all along (keeping the last
    # lines for failure messages), as any supervisor of the process would.
    log = collections.deque(maxlen=200)
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        pytest.fail("sembase serve printed no ready line within 120 s")
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail(f"sembase serve did not start: {line!r} {''.join(log)}")
    url = line.split("listening on ", 1)[1].strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "".join(log)
