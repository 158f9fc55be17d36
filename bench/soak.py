#!/usr/bin/env python3
"""Soak test of `sembase serve`: N minutes of mixed traffic, to see whether memory, open
descriptors or latency drift while the server runs (a leak shows as a slope, not a level).

    .venv-bench/bin/python bench/soak.py [--minutes 30] [--clients 64] [--model all-minilm-l6-v2]
                                         [--url http://127.0.0.1:8080 --pid PID] [--index NAME=DIR]

(Standard library only: any python3 runs it.) Without --url it starts
`sembase serve --model M --port 0` itself ($SEMBASE_BIN, default target/release/sembase;
models from $SEMBASE_HOME, default ~/.cache/sembase) and stops it with SIGTERM at the end.
With --url, pass --pid for the server's RSS and descriptors (read from /proc, so the
server must run on this machine).

The clients, all at once on keep-alive connections:
- most send a weighted mix: embeddings of 1 short text, of 16 texts, of 8 long texts
  (~300 tokens, over MiniLM's 256-token limit: truncated), of 128 texts; POST /tokenize;
  GET /v1/models; GET /health; POST /v1/search when an index is given;
- one in eight are slow: each request trickled in pieces over --slow-seconds, either the
  headers or the body;
- one in eight walk away: they close the connection halfway through the body, right
  after sending a whole request (without reading the answer), or after the answer's
  status line.
Every --interval seconds (60) one line: the server's RSS, open descriptors (/proc/PID/fd)
and threads, requests answered, p50/p99 latency of the normal clients, slow requests
answered, abandoned requests, and errors by kind (an HTTP status other than 2xx, or a
connection failure; the walk-aways' own cuts are not errors). At the end, the drift
between the first and the last interval: RSS, descriptors and p99.
"""
import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import (DEFAULT_SEMBASE, Connection, Server, check_model, error_kind, fd_limit,  # noqa: E402
                          long_text, machine, percentile, proc_stats, raise_fd_limit, read_response, request_bytes,
                          split_url, texts, wait_ready)

REQUEST_TIMEOUT_S = 120.0


class Interval:
    """What happened since the last report."""

    def __init__(self):
        self.latencies = []
        self.by_op = collections.defaultdict(list)  # op -> latencies (s)
        self.errors = collections.Counter()
        self.slow_ok = 0
        self.slow_latencies = []
        self.abandoned = 0


class Traffic:
    """The request mix: (name, weight, method, path, body) with bodies built once."""

    def __init__(self, model, corpus, index, rng):
        self.rng = rng
        self.corpus = corpus
        long_texts = [long_text(300, seed=i) for i in range(64)]
        model_field = {"model": model} if model else {}

        def embed(n, pool):
            def body():
                start = rng.randrange(len(pool))
                chunk = [pool[(start + i) % len(pool)] for i in range(n)]
                return json.dumps({**model_field, "input": chunk if n > 1 else chunk[0]}).encode()
            return body

        def tokenize():
            start = rng.randrange(len(corpus))
            return json.dumps({**model_field, "inputs": corpus[start:start + 4] or corpus[:4]}).encode()

        self.ops = [
            ("embed 1", 30, "POST", "/v1/embeddings", embed(1, corpus)),
            ("embed 16", 15, "POST", "/v1/embeddings", embed(16, corpus)),
            ("embed 8 long", 5, "POST", "/v1/embeddings", embed(8, long_texts)),
            ("embed 128", 2, "POST", "/v1/embeddings", embed(128, corpus)),
            ("tokenize", 10, "POST", "/tokenize", tokenize),
            ("models", 8, "GET", "/v1/models", None),
            ("health", 8, "GET", "/health", None),
        ]
        if index:
            def search():
                return json.dumps({"index": index, "query": rng.choice(corpus), "top_k": 10}).encode()
            self.ops.append(("search", 12, "POST", "/v1/search", search))
        self.weights = [op[1] for op in self.ops]

    def pick(self):
        name, _, method, path, body = self.rng.choices(self.ops, self.weights)[0]
        return name, method, path, (body() if body else b"")


async def normal_client(state, host, port, api_key, traffic, deadline):
    conn = Connection(host, port, api_key)
    while time.monotonic() < deadline:
        name, method, path, body = traffic.pick()
        start = time.perf_counter()
        try:
            status, _ = await conn.request(method, path, body, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
            state.current.errors[error_kind(exc)] += 1
            await asyncio.sleep(0.1)
            continue
        state.current.latencies.append(time.perf_counter() - start)
        state.current.by_op[name].append(time.perf_counter() - start)
        if not 200 <= status < 300:
            state.current.errors[f"HTTP {status}"] += 1
    conn.close()


async def slow_client(state, host, port, api_key, traffic, deadline, slow_seconds, which):
    """Each request on its own connection, trickled in 10 pieces: the headers (even
    clients) or the body (odd ones)."""
    rng = random.Random(which)
    while time.monotonic() < deadline:
        _, method, path, body = traffic.pick()
        if method == "GET":  # trickle a body: an embedding request
            method, path, body = "POST", "/v1/embeddings", json.dumps({"input": rng.choice(traffic.corpus)}).encode()
        head, body = request_bytes(method, path, host, body, api_key, close=True)
        slow, fast = (head, body) if which % 2 == 0 else (body, b"")
        start = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            if which % 2 == 1:
                writer.write(head)
            pieces = [slow[i * len(slow) // 10:(i + 1) * len(slow) // 10] for i in range(10)]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(slow_seconds / 10)
            writer.write(fast)
            status, _, _ = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_S)
            state.current.slow_latencies.append(time.perf_counter() - start)
            state.current.slow_ok += 1
            if not 200 <= status < 300:
                state.current.errors[f"slow: HTTP {status}"] += 1
        except Exception as exc:  # noqa: BLE001
            state.current.errors[f"slow: {error_kind(exc)}"] += 1
        finally:
            if writer is not None:
                writer.transport.abort()


async def leaving_client(state, host, port, api_key, traffic, deadline, which):
    """Requests given up on: cut mid-body, cut before reading the answer, cut after its status line."""
    rng = random.Random(1000 + which)
    mode = which
    while time.monotonic() < deadline:
        mode += 1
        _, method, path, body = traffic.pick()
        if method == "GET" or mode % 3 == 0:  # a body to cut: an embedding request with some work in it
            chunk = rng.sample(traffic.corpus, 16)
            method, path, body = "POST", "/v1/embeddings", json.dumps({"input": chunk}).encode()
        head, body = request_bytes(method, path, host, body, api_key)
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            if mode % 3 == 0:
                writer.write(head + body[:len(body) // 2])
                await writer.drain()
                await asyncio.sleep(0.05)
            elif mode % 3 == 1:
                writer.write(head + body)
                await writer.drain()
                await asyncio.sleep(0.001)
            else:
                writer.write(head + body)
                await writer.drain()
                await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            state.current.abandoned += 1
        except Exception as exc:  # noqa: BLE001
            state.current.errors[f"walk-away: {error_kind(exc)}"] += 1
        finally:
            if writer is not None:
                writer.transport.abort()
        await asyncio.sleep(rng.uniform(0.05, 0.3))


class State:
    def __init__(self):
        self.current = Interval()


def summarise(interval, elapsed, pid, started):
    lat = sorted(interval.latencies)
    rss, fds, threads = proc_stats(pid)
    return {
        "t_s": round(time.monotonic() - started, 1),
        "rss_mib": rss, "fds": fds, "threads": threads,
        "requests": len(lat), "requests_per_s": len(lat) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(lat, 0.50) * 1000, "p99_ms": percentile(lat, 0.99) * 1000,
        "slow_answered": interval.slow_ok,
        "slow_p50_s": percentile(sorted(interval.slow_latencies), 0.5),
        "abandoned": interval.abandoned,
        "errors": dict(interval.errors),
        "by_op": {op: {"n": len(v), "p50_ms": percentile(sorted(v), 0.5) * 1000,
                       "p99_ms": percentile(sorted(v), 0.99) * 1000} for op, v in sorted(interval.by_op.items())},
    }


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_row(i, row):
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(row["errors"].items())) or "none"
    print(f"{i:>4} {row['t_s']:>7.0f} {fmt(row['rss_mib'], '>8.1f')} {fmt(row['fds'], '>5')} "
          f"{fmt(row['threads'], '>7')} {row['requests']:>8} {row['requests_per_s']:>7.1f} {row['p50_ms']:>8.1f} "
          f"{row['p99_ms']:>8.1f} {row['slow_answered']:>6} {row['slow_p50_s']:>7.1f} {row['abandoned']:>6}  {errors}",
          flush=True)


async def soak(args, url, pid):
    host, port = split_url(url)
    corpus = texts()
    rng = random.Random(args.seed)
    traffic = Traffic(args.request_model, corpus, args.index_name, rng)
    state = State()
    started = time.monotonic()
    # Whole intervals only, so that the last one is comparable with the first.
    intervals = max(1, round(args.minutes * 60 / args.interval))
    deadline = started + intervals * args.interval
    slow = max(1, args.clients // 8) if args.clients >= 8 else 0
    leaving = slow
    normal = args.clients - slow - leaving
    print(f"clients: {normal} normal, {slow} slow (a request trickled over {args.slow_seconds:g} s), "
          f"{leaving} walking away; ops: " + ", ".join(f"{op[0]} x{op[1]}" for op in traffic.ops))
    rss0, fds0, threads0 = proc_stats(pid)
    print(f"server before the load: RSS {fmt(rss0, '.1f')} MiB, {fmt(fds0, '')} fds, {fmt(threads0, '')} threads")
    print(f"{'int':>4} {'t s':>7} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'answered':>8} {'req/s':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'slow':>6} {'slow s':>7} {'left':>6}  errors by kind")
    tasks = [asyncio.create_task(normal_client(state, host, port, args.api_key, traffic, deadline))
             for _ in range(normal)]
    tasks += [asyncio.create_task(slow_client(state, host, port, args.api_key, traffic, deadline,
                                              args.slow_seconds, i)) for i in range(slow)]
    tasks += [asyncio.create_task(leaving_client(state, host, port, args.api_key, traffic, deadline, i))
              for i in range(leaving)]
    rows = []
    whole_run = collections.defaultdict(list)
    mark = started
    while time.monotonic() < deadline:
        await asyncio.sleep(max(0.0, min(mark + args.interval, deadline) - time.monotonic()))
        now = time.monotonic()
        interval, state.current = state.current, Interval()
        for op, values in interval.by_op.items():
            whole_run[op].extend(values)
        rows.append(summarise(interval, now - mark, pid, started))
        print_row(len(rows), rows[-1])
        mark = now
    # Clients finish the request they are in (bounded by REQUEST_TIMEOUT_S); it is not counted.
    await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 10)
    for t in tasks:
        t.cancel()
    await asyncio.sleep(1.0)  # the server closes the last connections
    after = proc_stats(pid)
    health = None
    try:
        conn = Connection(host, port, args.api_key)
        health, _ = await conn.request("GET", "/health", timeout=30)
        conn.close()
    except Exception as exc:  # noqa: BLE001
        health = error_kind(exc)
    print("\nlatency by operation over the whole run (normal clients):")
    for op, values in sorted(whole_run.items()):
        values.sort()
        print(f"  {op:<14} n={len(values):<6} p50 {percentile(values, 0.5) * 1000:9.1f} ms  "
              f"p99 {percentile(values, 0.99) * 1000:9.1f} ms  max {values[-1] * 1000:9.1f} ms")
    return rows, after, health


def drift(rows, after, health):
    """The first interval against the last: RSS, descriptors, p99."""
    first, last = rows[0], rows[-1]
    result = {"intervals": len(rows), "health_after": health}
    print()
    if first["rss_mib"] is not None and last["rss_mib"] is not None:
        d = last["rss_mib"] - first["rss_mib"]
        result["rss_drift_mib"] = d
        print(f"RSS drift, interval 1 -> {len(rows)}: {first['rss_mib']:.1f} -> {last['rss_mib']:.1f} MiB "
              f"({d:+.1f} MiB, {100 * d / first['rss_mib']:+.1f}%)")
        print(f"fds, interval 1 -> {len(rows)}: {first['fds']} -> {last['fds']}; after the clients left: "
              f"{after[1]} fds, RSS {fmt(after[0], '.1f')} MiB, {after[2]} threads")
    d99 = last["p99_ms"] - first["p99_ms"]
    result["p99_drift_ms"] = d99
    print(f"p99 drift, interval 1 -> {len(rows)}: {first['p99_ms']:.1f} -> {last['p99_ms']:.1f} ms ({d99:+.1f} ms, "
          f"{100 * d99 / first['p99_ms'] if first['p99_ms'] else float('nan'):+.1f}%)")
    errors = collections.Counter()
    for row in rows:
        errors.update(row["errors"])
    total = sum(r["requests"] for r in rows)
    print(f"answered {total} requests, {sum(r['slow_answered'] for r in rows)} slow ones, "
          f"{sum(r['abandoned'] for r in rows)} abandoned; errors: "
          + (", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none"))
    print(f"GET /health after the run: {health}")
    result["errors"] = dict(errors)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="how long the load runs (default 30)")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per report line (default 60)")
    p.add_argument("--url", help="a running server (loopback) instead of starting one")
    p.add_argument("--pid", type=int, help="the running server's pid, with --url (for RSS and fds)")
    p.add_argument("--model", default="all-minilm-l6-v2",
                   help="model the server started here serves (store name, DIR or NAME=DIR)")
    p.add_argument("--index", help="NAME=DIR: an index to serve and search (with --url: NAME of a served one)")
    p.add_argument("--threads", type=int, help="--threads of the server started here")
    p.add_argument("--server-arg", action="append", default=[], help="one more argument for `sembase serve` "
                   "(repeatable: --server-arg=--max-batch-tokens --server-arg=8192)")
    p.add_argument("--api-key", help="bearer key (also given to the server started here)")
    p.add_argument("--slow-seconds", type=float, default=5.0, help="how long a slow client takes to send a request")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sembase", type=Path, default=DEFAULT_SEMBASE, help="binary ($SEMBASE_BIN)")
    p.add_argument("--json", type=Path, help="write every interval's figures here")
    args = p.parse_args()
    if args.minutes <= 0 or args.clients < 1 or args.interval <= 0:
        p.error("--minutes, --clients and --interval must be positive")
    args.index_name = args.index.split("=", 1)[0] if args.index else None
    # The served model's name, for the requests: with --url the server's first model answers.
    args.request_model = None
    print(machine())
    print(f"open-file limit of this client: {raise_fd_limit()}")
    server = None
    if args.url:
        url, pid = args.url, args.pid
        print(f"server: {url} (started elsewhere; "
              + (f"pid {pid}, open-file limit {fd_limit(pid)})" if pid else "pid not given: no RSS/fds)"))
    else:
        check_model(args.sembase, args.model)
        extra = ["--model", args.model]
        if args.index:
            extra += ["--index", args.index]
        if args.threads:
            extra += ["--threads", str(args.threads)]
        if args.api_key:
            extra += ["--api-key", args.api_key]
        server = Server(args.sembase, extra + args.server_arg)
        url, pid = server.url, server.pid
        print(server.describe())
    host, port = split_url(url)
    wait_ready(host, port, args.api_key)
    try:
        rows, after, health = asyncio.run(soak(args, url, pid))
    finally:
        exit_code = server.stop() if server else None
    result = drift(rows, after, health)
    if server:
        print(f"server exit after SIGTERM: {exit_code}")
        result["server_exit"] = exit_code
    if args.json:
        args.json.write_text(json.dumps({"intervals": rows, "summary": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
