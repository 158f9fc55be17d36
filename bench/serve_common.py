"""What bench/soak.py and bench/slowloris.py share: the machine's description, starting
`sembase serve` (and saying how), reading a server's RSS and open descriptors from /proc,
a raw HTTP/1.1 client on asyncio streams (so that the scripts can send a request by
halves, slowly, or walk away from it), texts to embed, and percentiles.

Standard library only: any python3 runs these scripts.
"""
import asyncio
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEMBASE = Path(os.environ.get("SEMBASE_BIN") or REPO_ROOT / "target" / "release" / "sembase")
# The model store, as sembase finds it: $SEMBASE_HOME, else ~/.cache/sembase.
SEMBASE_HOME = Path(os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase")
STSB_TEST = REPO_ROOT.parent / "shared" / "data" / "en" / "stsb" / "test.tsv"
# The CPU features the kernels dispatch on (DESIGN.md: AVX2/FMA, some AVX-512 and VNNI).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def machine():
    """One line about the CPU (model, cores, the dispatch-relevant flags) and the load."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.processor(), platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [f for f in CPU_FLAGS if f in flags]
    return (f"cpu: {name}, {os.cpu_count()} cores, features: {' '.join(present) or 'unknown'}; "
            f"load average {os.getloadavg()[0]:.2f}; python {platform.python_version()}")


def raise_fd_limit():
    """Lifts this process's open-file limit to its hard limit (slow clients hold many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 16 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_model(sembase, model):
    """Exits with a hint when the binary or the model is missing."""
    if not Path(sembase).exists():
        sys.exit(f"{sembase} not found: cargo build --release -p sembase-cli (or set SEMBASE_BIN)")
    spec = model.split("=", 1)[-1]
    if not (Path(spec).is_dir() or (SEMBASE_HOME / "models" / spec).is_dir()):
        sys.exit(f"{spec} is neither a directory nor in {SEMBASE_HOME}/models: "
                 f"`{sembase} model pull {spec}` (or set SEMBASE_HOME)")


class Server:
    """`sembase serve --port 0 ...` started here: its command line, pid and base URL."""

    def __init__(self, sembase, args):
        self.command = [str(sembase), "serve", "--port", "0", *args]
        env = {**os.environ, "SEMBASE_HOME": str(SEMBASE_HOME)}
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            sys.exit(f"sembase serve did not start: {line!r} ({shlex.join(self.command)})")
        self.url = line.split("listening on ", 1)[1].strip()
        self.pid = self.proc.pid

    def describe(self):
        return (f"server started here (pid {self.pid}, open-file limit {fd_limit(self.pid)}): "
                f"SEMBASE_HOME={SEMBASE_HOME} {shlex.join(self.command)}")

    def stop(self):
        """SIGTERM, then the exit status (or 'killed' after 30 s)."""
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "killed after 30 s"


def proc_stats(pid):
    """(RSS in MiB, open descriptors, threads) of a local process; None for what cannot be read."""
    if pid is None:
        return None, None, None
    rss = threads = fds = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return rss, fds, threads


def fd_limit(pid):
    """The soft open-file limit of a local process (a slow client holds one of its descriptors)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
    except (OSError, IndexError, TypeError):
        pass
    return None


def split_url(url):
    """(host, port) of an http:// URL; loopback only."""
    rest = url.split("://", 1)[-1].rstrip("/")
    host, port = rest.rsplit(":", 1)
    host = host.strip("[]")
    if host not in ("localhost", "::1") and not host.startswith("127."):
        sys.exit(f"loopback only: {url}")
    return host, int(port)


def request_bytes(method, path, host, body=b"", api_key=None, close=False):
    """The head and body of one HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    if body or method in ("POST", "PUT", "DELETE"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


async def read_response(reader):
    """(status, body, server wants to close) of one answer; raises on a cut connection."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed before the answer")
    status = int(status_line.split()[1])
    length, close, chunked = None, False, False
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("closed in the answer's headers")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value == b"close":
            close = True
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = await reader.read()
        close = True
    return status, body, close


class Connection:
    """A keep-alive connection that reopens itself after the server closes it."""

    def __init__(self, host, port, api_key=None):
        self.host, self.port, self.api_key = host, port, api_key
        self.reader = self.writer = None

    async def request(self, method, path, body=b"", timeout=120.0):
        """(status, body) of one request; the connection is dropped on any failure."""
        try:
            return await asyncio.wait_for(self._request(method, path, body), timeout)
        except BaseException:
            self.close()
            raise

    async def _request(self, method, path, body):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head, body = request_bytes(method, path, self.host, body, self.api_key)
        self.writer.write(head + body)
        await self.writer.drain()
        status, payload, close = await read_response(self.reader)
        if close:
            self.close()
        return status, payload

    def close(self):
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


def error_kind(exc):
    """A short name for a failed request's exception."""
    if isinstance(exc, asyncio.TimeoutError):
        return "client timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError)):
        return "connection reset/closed"
    return type(exc).__name__


def percentile(sorted_values, q):
    """The q-quantile (0..1) of sorted values, nearest rank; nan when empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def texts(limit=4000):
    """Sentences to embed: the STS-B test sentences when ../shared/data has them, else
    generated ones (so that the scripts run anywhere)."""
    if STSB_TEST.exists():
        rows = [line.split("\t") for line in STSB_TEST.read_text(encoding="utf-8").splitlines()[1:]]
        found = [" ".join(r[i].split()) for r in rows if len(r) >= 2 for i in (0, 1)]
        if found:
            return found[:limit]
    rng = random.Random(7)
    words = ("the a server model vector search query text token batch latency memory client request answer "
             "slow fast large small index document embedding sentence people city river music").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 24))).capitalize() + "." for _ in range(limit)]


def long_text(tokens, seed=0):
    """A text of about `tokens` word-piece tokens (plain English words, one token each mostly)."""
    rng = random.Random(seed)
    words = ("time people year way day man thing woman life child world school state family student group "
             "country problem hand part place case week company system program question work government number "
             "night point home water room mother area money story fact month lot right study book eye job word "
             "business issue side kind head house service friend father power hour game line end member law car").split()
    return " ".join(rng.choice(words) for _ in range(tokens))


def wait_ready(host, port, api_key=None, deadline_s=300):
    """Polls GET /health until it answers 200 (the models are loaded)."""
    async def poll():
        conn = Connection(host, port, api_key)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                status, _ = await conn.request("GET", "/health", timeout=10)
                if status == 200:
                    conn.close()
                    return
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.2)
        sys.exit(f"server at {host}:{port} not ready within {deadline_s} s")
    asyncio.run(poll())
