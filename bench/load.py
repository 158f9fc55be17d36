#!/usr/bin/env python3
"""Load test of `sembase serve` on loopback, against `sembase embed` on the same texts.

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python bench/load.py [--sembase BIN] [--model NAME] [--url URL --pid PID]
                  [--clients 1,8,64] [--duration 10] [--batch 1] [--json OUT]

(This script uses only the standard library: any python3 runs it too.) The model comes from the
store, $SEMBASE_HOME (default ~/.cache/sembase: `target/release/sembase model pull NAME`), the
sentences from ../shared/data beside the repository, the binary from target/release.

What it does, in one run on one machine:
1. Starts `sembase serve --model M --port 0` (or uses --url; pass --pid for RSS) and
   waits for its ready line.
2. Warm-up: every text once at the highest client count. RSS is read (VmRSS of /proc/PID/status) when
   the server is ready, after the warm-up, and at the end.
3. For each client count: that many concurrent keep-alive connections, each sending
   `--batch` STS-B test sentences per request (sentence1 column then sentence2,
   round-robin over the 2758 texts) for `--duration` seconds, at most
   `--max-requests` requests per level. Prints requests/s, embedded tokens/s
   (usage.prompt_tokens of 2xx answers), p50/p99 latency and non-2xx / 5xx counts.
4. Peer in the same run: `sembase embed` on the same texts, before and after the
   server's levels (start-up subtracted: the time of a one-line run is taken off), and
   the ratio of the highest client count's tokens/s to the faster of the two, printed at the end as
   `serve/embed tokens/s ratio at 64 clients: X` (and "ratio" in --json), after embed's
   line naming the CPU kernels it ran.

Loopback only; every loop is bounded in time and count.
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "en" / "stsb" / "test.tsv"
DEFAULT_SEMBASE = REPO_ROOT / "target" / "release" / "sembase"
# The model store, as sembase finds it: $SEMBASE_HOME, else ~/.cache/sembase.
SEMBASE_HOME = Path(os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase")
USAGE = re.compile(rb'"prompt_tokens":(\d+)')


def stsb_sentences(path):
    """The STS-B test sentences: the sentence1 column, then sentence2 (one line each)."""
    rows = [line.rstrip("\n").split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines()[1:]]
    rows = [r for r in rows if len(r) >= 2]
    texts = [r[0] for r in rows] + [r[1] for r in rows]
    return [" ".join(t.split()) for t in texts]


def rss_kib(pid, field="VmRSS"):
    """A memory figure of a process from /proc/PID/status (VmRSS, or VmHWM for the peak) in KiB, or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Connection:
    """One HTTP/1.1 keep-alive connection with a minimal client (little CPU per request,
    so the load generator takes as little as possible from the server on a small machine)."""

    def __init__(self, host, port, path, api_key):
        self.host, self.port, self.path, self.api_key = host, port, path, api_key
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body):
        if self.writer is None:
            await self.open()
        auth = f"Authorization: Bearer {self.api_key}\r\n" if self.api_key else ""
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def run_level(url, api_key, model, texts, clients, batch, duration, max_requests):
    """`clients` concurrent loops for `duration` seconds; returns the level's figures."""
    host_port = url.split("://", 1)[1].rstrip("/")
    host, port = host_port.rsplit(":", 1)
    host = host.strip("[]")
    next_text = 0
    sent = 0
    latencies, statuses, tokens, failures = [], {}, 0, 0
    deadline = time.perf_counter() + duration

    def take():
        nonlocal next_text
        chunk = [texts[(next_text + i) % len(texts)] for i in range(batch)]
        next_text = (next_text + batch) % len(texts)
        return chunk

    async def client():
        nonlocal sent, tokens, failures
        conn = Connection(host, int(port), "/v1/embeddings", api_key)
        try:
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                chunk = take()
                body = json.dumps({"model": model, "input": chunk if batch > 1 else chunk[0]}).encode()
                start = time.perf_counter()
                try:
                    status, payload = await conn.post(body)
                except (OSError, ConnectionError, asyncio.IncompleteReadError):
                    failures += 1
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    m = USAGE.search(payload)
                    tokens += int(m.group(1)) if m else 0
        finally:
            await conn.close()

    started = time.perf_counter()
    cpu_before = os.times()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    cpu_after = os.times()
    client_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    latencies.sort()

    def quantile(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "clients": clients,
        "batch": batch,
        "seconds": elapsed,
        "requests": len(latencies),
        "requests_per_s": ok / elapsed,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "p50_ms": quantile(0.50) * 1000,
        "p99_ms": quantile(0.99) * 1000,
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "connection_failures": failures,
        "client_cpu_share": client_cpu / elapsed,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def start_server(args, extra=()):
    """`sembase serve --model M --port 0` with `extra` flags: (process, address)."""
    cmd = [str(args.sembase), "serve", "--model", args.model, "--port", "0"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += list(extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    deadline = time.time() + 300
    line = proc.stdout.readline()
    if time.time() > deadline or not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()


def time_embed(args, texts):
    """Wall seconds of `sembase embed` on the texts, a one-line run's (start-up, the faster of two),
    and the line in which embed names its CPU kernels (None from a binary that prints none)."""
    kernels = None

    def run(lines):
        nonlocal kernels
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "in.txt", Path(tmp) / "out.jsonl"
            src.write_text("\n".join(lines) + "\n", encoding="utf-8")
            cmd = [str(args.sembase), "embed", "--model", args.model, "--input", str(src), "--output", str(out)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            start = time.perf_counter()
            done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            kernels = next((line for line in done.stderr.splitlines() if line.startswith("kernels: ")), kernels)
            return seconds

    startup = min(run(texts[:1]) for _ in range(2))
    full = run(texts)
    return full, startup, kernels


async def count_tokens(url, api_key, model, texts):
    """Tokens of the texts after truncation (usage of one embedding call per 256 texts)."""
    total = 0
    host_port = url.split("://", 1)[1].rstrip("/")
    host, port = host_port.rsplit(":", 1)
    conn = Connection(host.strip("[]"), int(port), "/v1/embeddings", api_key)
    for i in range(0, len(texts), 256):
        status, payload = await conn.post(json.dumps({"model": model, "input": texts[i : i + 256]}).encode())
        if status != 200:
            sys.exit(f"token count failed: {status} {payload[:200]!r}")
        total += int(USAGE.search(payload).group(1))
    await conn.close()
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sembase", type=Path, default=DEFAULT_SEMBASE)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--url", help="use a running server instead of starting one")
    p.add_argument("--pid", type=int, help="the running server's pid (for RSS), with --url")
    p.add_argument("--api-key", default=os.environ.get("SEMBASE_API_KEY"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--clients", default="1,8,64")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per client count")
    p.add_argument("--max-requests", type=int, default=200_000, help="requests per client count at most")
    p.add_argument("--batch", type=int, default=1, help="sentences per request")
    p.add_argument("--threads", type=int, help="compute threads for both engines (default: all cores)")
    p.add_argument("--no-peer", action="store_true", help="skip the `sembase embed` comparison")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.duration > 600 or args.duration <= 0:
        sys.exit("--duration must be in (0, 600]")
    if not (args.url and args.no_peer):  # the server or the peer runs the model here
        if not (Path(args.model).is_dir() or (SEMBASE_HOME / "models" / args.model).is_dir()):
            sys.exit(f"{args.model} is not in {SEMBASE_HOME}/models: run `target/release/sembase model pull {args.model}`")
        if not args.sembase.exists():
            sys.exit(f"{args.sembase} not found (cargo build --release)")

    texts = stsb_sentences(args.data)
    peer_runs = [] if args.no_peer else [time_embed(args, texts)]
    proc = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        proc, url = start_server(args)
        pid = proc.pid
    host = url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        sys.exit(f"loopback only: {url}")
    result = {"model": args.model, "url": url, "texts": len(texts), "levels": []}
    try:
        result["rss_ready_kib"] = rss_kib(pid)
        total_tokens = asyncio.run(count_tokens(url, args.api_key, args.model, texts))
        result["corpus_tokens"] = total_tokens
        levels = [int(c) for c in args.clients.split(",")]
        # Warm-up at the highest concurrency, so that the allocator has seen the largest
        # merged batches before RSS is taken as the baseline.
        warm = asyncio.run(run_level(url, args.api_key, args.model, texts, max(levels), args.batch, 600, len(texts)))
        result["warmup"] = {k: warm[k] for k in ("requests", "seconds", "non_2xx")}
        result["rss_warm_kib"] = rss_kib(pid)
        print(f"server {url} (pid {pid}); {len(texts)} texts, {total_tokens} tokens; batch {args.batch} per request")
        print(
            f"{'clients':>7} {'req/s':>9} {'tokens/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'5xx':>5} "
            f"{'requests':>9} {'RSS MiB':>8} {'client CPU':>10}"
        )
        for clients in levels:
            level = asyncio.run(
                run_level(url, args.api_key, args.model, texts, clients, args.batch, args.duration, args.max_requests)
            )
            level["rss_kib"] = rss_kib(pid)
            result["levels"].append(level)
            print(
                f"{clients:>7} {level['requests_per_s']:>9.1f} {level['tokens_per_s']:>10.0f} {level['p50_ms']:>8.1f} "
                f"{level['p99_ms']:>8.1f} {level['non_2xx']:>8} {level['5xx']:>5} {level['requests']:>9} "
                f"{(level['rss_kib'] or 0) / 1024:>8.1f} {100 * level['client_cpu_share']:>9.0f}%"
                + (f"  connection failures: {level['connection_failures']}" if level["connection_failures"] else "")
            )
        result["rss_end_kib"] = rss_kib(pid)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "killed"
            result["server_exit"] = code
    r0, r1, r2 = result.get("rss_ready_kib"), result.get("rss_warm_kib"), result.get("rss_end_kib")
    if r0 and r1 and r2:
        result["rss_growth_after_warmup"] = r2 / r1 - 1
        print(
            f"server RSS: ready {r0 / 1024:.1f} MiB, after warm-up {r1 / 1024:.1f} MiB, end {r2 / 1024:.1f} MiB "
            f"(growth over the measured run {100 * (r2 / r1 - 1):+.1f}%, since ready {100 * (r2 / r0 - 1):+.1f}%)"
        )
    if not args.no_peer:
        # The peer ran before and after the server's levels; the faster run counts
        # (the conservative choice on a machine whose load changes).
        peer_runs.append(time_embed(args, texts))
        rates = [total_tokens / max(full - startup, 1e-9) for full, startup, _ in peer_runs]
        peer = max(rates)
        result["embed"] = {
            "runs": [{"seconds": f, "startup_seconds": s0, "tokens_per_s": r}
                     for (f, s0, _), r in zip(peer_runs, rates)],
            "tokens_per_s": peer,
            "kernels": peer_runs[-1][2],
        }
        print(f"sembase embed {peer_runs[-1][2] or 'kernels: not reported (a binary older than the kernel line)'}")
        for (full, startup, _), rate in zip(peer_runs, rates):
            print(f"sembase embed: {full:.2f} s for {len(texts)} texts, start-up {startup:.2f} s -> {rate:.0f} tokens/s")
        top = max(result["levels"], key=lambda lv: lv["clients"])
        result["ratio"] = top["tokens_per_s"] / peer
        print(f"serve/embed tokens/s ratio at {top['clients']} clients: {result['ratio']:.2f} "
              f"(serve {top['tokens_per_s']:.0f} tokens/s; embed {peer:.0f}, the faster of its two runs)")
    if "server_exit" in result:
        print(f"server exit after SIGTERM: {result['server_exit']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
