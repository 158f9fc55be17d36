#!/usr/bin/env python3
"""Slow clients and one huge request against `sembase serve`: do they hurt everyone else?

    .venv-bench/bin/python bench/slowloris.py [--slow 0,100,500] [--hold 60] [--trickle-seconds 5]
                                              [--model all-minilm-l6-v2 | --url URL --pid PID]
                                              [--large-inputs 2048 --large-tokens 500]

(Standard library only: any python3 runs it.) Without --url it starts
`sembase serve --model M --port 0` itself ($SEMBASE_BIN, default target/release/sembase;
models from $SEMBASE_HOME, default ~/.cache/sembase), once per part, and stops it with SIGTERM.

1. Slow connections (slowloris). For each N in --slow: N connections are opened, half of
   them trickling a request's headers (a header line, one byte every --trickle-seconds),
   half a body (complete headers announcing a body, then one byte every --trickle-seconds).
   For --hold seconds, probes send normal one-sentence embedding requests, one at a time,
   on a new connection each (the path a new client takes: accept, read, answer) and on
   one kept-alive connection. Printed: the probes' p50/p99/max latency and failures, how
   many slow connections the server cut and when (seconds after they opened; what it
   answered, if anything), how many were still open at the end, and the server's open
   descriptors and RSS. A server without read timeouts keeps every slow connection.
2. Starvation. --small-clients clients send one-sentence requests one after the other:
   first alone for --baseline-seconds, then while one large request (--large-inputs
   texts of about --large-tokens tokens each; a model with a lower limit truncates them)
   runs. Printed: the small requests' p50/p99/max in both cases, and the large request's
   time and status. A batcher that runs the large request's batches ahead of the small
   ones shows as a p99 near the large request's time.
"""
import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import (DEFAULT_SEMBASE, Connection, Server, check_model, error_kind, fd_limit,  # noqa: E402
                          long_text, machine, percentile, proc_stats, raise_fd_limit, read_response, request_bytes,
                          split_url, texts, wait_ready)

PROBE_TIMEOUT_S = 60.0


class SlowConnection:
    """One connection that never finishes its request; records when the server gives up on it."""

    def __init__(self, host, port, api_key, body_mode):
        self.host, self.port, self.api_key, self.body_mode = host, port, api_key, body_mode
        self.opened = None
        self.closed_after = None  # seconds from open to the server's cut
        self.answer = None  # the status the server sent before cutting, if any
        self.failed = None  # could not even connect
        self.writer = None

    async def run(self, trickle_seconds, stop):
        try:
            reader, self.writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            self.failed = error_kind(exc)
            return
        self.opened = time.monotonic()
        if self.body_mode:
            head, _ = request_bytes("POST", "/v1/embeddings", self.host, b"x" * 100_000, self.api_key)
            first, drip = head, b'{"input": "' + b"a" * 100_000
        else:
            first = f"POST /v1/embeddings HTTP/1.1\r\nHost: {self.host}\r\n".encode()
            drip = b"X-Slow: " + b"a" * 100_000
        try:
            self.writer.write(first)
            await self.writer.drain()
            for i in range(len(drip)):
                if stop.is_set():
                    return
                self.writer.write(drip[i:i + 1])
                await self.writer.drain()
                # Wait for the next byte's time, watching for an answer or a close meanwhile.
                try:
                    data = await asyncio.wait_for(reader.read(4096), trickle_seconds)
                except asyncio.TimeoutError:
                    continue
                self.closed_after = time.monotonic() - self.opened
                if data:
                    self.answer = data.split(b"\r\n", 1)[0].decode(errors="replace")
                return
        except (ConnectionError, OSError):
            self.closed_after = time.monotonic() - self.opened

    def close(self):
        if self.writer is not None:
            self.writer.transport.abort()


async def probe_fresh(host, port, api_key, body, stop, latencies, errors):
    """Embedding requests one at a time, each on a new connection."""
    while not stop.is_set():
        start = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
            head, payload = request_bytes("POST", "/v1/embeddings", host, body, api_key, close=True)
            writer.write(head + payload)
            status, _, _ = await asyncio.wait_for(read_response(reader), PROBE_TIMEOUT_S)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        except Exception as exc:  # noqa: BLE001 - counted by kind
            errors[error_kind(exc)] = errors.get(error_kind(exc), 0) + 1
        finally:
            if writer is not None:
                writer.transport.abort()
        await asyncio.sleep(0.05)


async def probe_kept(host, port, api_key, body, stop, latencies, errors, pause=0.05):
    """Embedding requests one at a time on one kept-alive connection."""
    conn = Connection(host, port, api_key)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            status, _ = await conn.request("POST", "/v1/embeddings", body, timeout=PROBE_TIMEOUT_S)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        except Exception as exc:  # noqa: BLE001
            errors[error_kind(exc)] = errors.get(error_kind(exc), 0) + 1
        await asyncio.sleep(pause)
    conn.close()


def stats_ms(latencies):
    s = sorted(latencies)
    return (f"n={len(s):<5} p50 {percentile(s, 0.5) * 1000:8.1f} ms  p99 {percentile(s, 0.99) * 1000:8.1f} ms  "
            f"max {(s[-1] if s else float('nan')) * 1000:8.1f} ms  over 1 s: {sum(x > 1.0 for x in s)}")


async def slowloris_level(url, pid, api_key, n, hold, trickle_seconds, body):
    host, port = split_url(url)
    stop = asyncio.Event()
    slow = [SlowConnection(host, port, api_key, body_mode=i % 2 == 1) for i in range(n)]
    before = proc_stats(pid)
    tasks = [asyncio.create_task(c.run(trickle_seconds, stop)) for c in slow]
    await asyncio.sleep(min(2.0, hold / 4) if n else 0)  # let them connect
    opened = sum(c.opened is not None for c in slow)
    fresh, kept, fresh_errors, kept_errors = [], [], {}, {}
    probes = [asyncio.create_task(probe_fresh(host, port, api_key, body, stop, fresh, fresh_errors)),
              asyncio.create_task(probe_kept(host, port, api_key, body, stop, kept, kept_errors))]
    peak = proc_stats(pid)
    end = time.monotonic() + hold
    while time.monotonic() < end:
        await asyncio.sleep(min(5.0, end - time.monotonic()))
        now = proc_stats(pid)
        if now[1] is not None and (peak[1] is None or now[1] > peak[1]):
            peak = now
    stop.set()
    await asyncio.wait(probes, timeout=PROBE_TIMEOUT_S + 5)
    alive = [c for c in slow if c.opened is not None and c.closed_after is None]
    longest = max((time.monotonic() - c.opened for c in alive), default=0.0)
    cut = sorted(c.closed_after for c in slow if c.closed_after is not None)
    answers = {}
    for c in slow:
        if c.closed_after is not None:
            key = c.answer or "closed without an answer"
            answers[key] = answers.get(key, 0) + 1
    failed = {}
    for c in slow:
        if c.failed:
            failed[c.failed] = failed.get(c.failed, 0) + 1
    for c in slow:
        c.close()
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    await asyncio.sleep(1.0)
    after = proc_stats(pid)
    print(f"\nN = {n} slow connections ({n - n // 2} trickling headers, {n // 2} a body; a byte every "
          f"{trickle_seconds:g} s), held {hold:g} s: {opened} connected" + (f", failed: {failed}" if failed else ""))
    print(f"  probe, new connection each: {stats_ms(fresh)}  errors: {fresh_errors or 'none'}")
    print(f"  probe, kept-alive:          {stats_ms(kept)}  errors: {kept_errors or 'none'}")
    if n:
        if cut:
            print(f"  cut by the server: {len(cut)} of {opened}, after {cut[0]:.1f} s (first) / "
                  f"{statistics.median(cut):.1f} s (median) / {cut[-1]:.1f} s (last); answers: {answers}")
        else:
            print(f"  cut by the server: none of {opened}")
        print(f"  still open at the end: {len(alive)} of {opened}" + (f", open for {longest:.0f} s" if alive else ""))
    print(f"  server fds: {before[1]} before, {peak[1]} at the peak, {after[1]} after the slow ones closed; "
          f"RSS {fmt_mib(before[0])} -> {fmt_mib(peak[0])} -> {fmt_mib(after[0])} MiB; threads {peak[2]}")
    return {"n": n, "opened": opened, "cut": len(cut), "cut_after_s": cut, "answers": answers, "alive": len(alive),
            "longest_alive_s": longest,
            "fresh_ms": [x * 1000 for x in fresh], "kept_ms": [x * 1000 for x in kept],
            "fresh_errors": fresh_errors, "kept_errors": kept_errors,
            "fds": [before[1], peak[1], after[1]], "rss_mib": [before[0], peak[0], after[0]]}


def fmt_mib(value):
    return "-" if value is None else f"{value:.1f}"


async def starvation(url, api_key, model, clients, baseline_seconds, large_inputs, large_tokens, large_timeout):
    host, port = split_url(url)
    corpus = texts()
    model_field = {"model": model} if model else {}
    small = [json.dumps({**model_field, "input": corpus[i]}).encode() for i in range(64)]
    large_body = json.dumps({**model_field, "input": [long_text(large_tokens, seed=i)
                                                      for i in range(large_inputs)]}).encode()

    async def small_loop(i, stop, latencies, errors):
        conn = Connection(host, port, api_key)
        k = i
        while not stop.is_set():
            k += clients
            start = time.perf_counter()
            try:
                status, _ = await conn.request("POST", "/v1/embeddings", small[k % len(small)], timeout=large_timeout)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            except Exception as exc:  # noqa: BLE001
                errors[error_kind(exc)] = errors.get(error_kind(exc), 0) + 1
        conn.close()

    # Alone.
    stop, alone, alone_errors = asyncio.Event(), [], {}
    loops = [asyncio.create_task(small_loop(i, stop, alone, alone_errors)) for i in range(clients)]
    await asyncio.sleep(baseline_seconds)
    stop.set()
    await asyncio.gather(*loops)
    # Beside the large request.
    stop, beside, beside_errors = asyncio.Event(), [], {}
    big = Connection(host, port, api_key)

    async def large():
        start = time.perf_counter()
        try:
            status, payload = await big.request("POST", "/v1/embeddings", large_body, timeout=large_timeout)
            tokens = json.loads(payload).get("usage", {}).get("prompt_tokens") if status == 200 else None
            return time.perf_counter() - start, f"HTTP {status}", tokens
        except Exception as exc:  # noqa: BLE001
            return time.perf_counter() - start, error_kind(exc), None
        finally:
            stop.set()

    large_task = asyncio.create_task(large())
    await asyncio.sleep(0.2)  # the large request is in before the small ones start
    loops = [asyncio.create_task(small_loop(i, stop, beside, beside_errors)) for i in range(clients)]
    seconds, status, tokens = await large_task
    await asyncio.gather(*loops)
    big.close()
    print(f"\nstarvation: {clients} clients sending one sentence at a time; one request of {large_inputs} texts "
          f"of ~{large_tokens} tokens ({len(large_body) / 1e6:.1f} MB body)")
    print(f"  small requests alone ({baseline_seconds:g} s):        {stats_ms(alone)}  errors: {alone_errors or 'none'}")
    print(f"  small requests beside the large one: {stats_ms(beside)}  errors: {beside_errors or 'none'}")
    print(f"  the large request: {seconds:.1f} s, {status}" + (f", {tokens} tokens after truncation "
                                                              f"({tokens / seconds:.0f} tokens/s)" if tokens else ""))
    return {"alone_ms": [x * 1000 for x in alone], "beside_ms": [x * 1000 for x in beside],
            "alone_errors": alone_errors, "beside_errors": beside_errors,
            "large_seconds": seconds, "large_status": status, "large_tokens": tokens}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slow", default="0,100,500", help="numbers of slow connections, one level each")
    p.add_argument("--hold", type=float, default=60.0, help="seconds each level holds its slow connections")
    p.add_argument("--trickle-seconds", type=float, default=5.0, help="seconds between two bytes of a slow client")
    p.add_argument("--small-clients", type=int, default=4, help="clients of small requests in the starvation part")
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="small requests alone, before the large one")
    p.add_argument("--large-inputs", type=int, default=2048, help="texts in the large request")
    p.add_argument("--large-tokens", type=int, default=500, help="tokens per text of the large request (about)")
    p.add_argument("--large-timeout", type=float, default=900.0, help="seconds the large request may take")
    p.add_argument("--skip-slowloris", action="store_true")
    p.add_argument("--skip-starvation", action="store_true")
    p.add_argument("--url", help="a running server (loopback) instead of starting one")
    p.add_argument("--pid", type=int, help="the running server's pid, with --url (for fds and RSS)")
    p.add_argument("--model", default="all-minilm-l6-v2", help="model the server started here serves")
    p.add_argument("--threads", type=int, help="--threads of the server started here")
    p.add_argument("--server-arg", action="append", default=[], help="one more argument for `sembase serve` "
                   "(repeatable: --server-arg=--max-batch-tokens --server-arg=8192)")
    p.add_argument("--api-key", help="bearer key (also given to the server started here)")
    p.add_argument("--sembase", type=Path, default=DEFAULT_SEMBASE, help="binary ($SEMBASE_BIN)")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args()
    levels = [int(n) for n in args.slow.split(",") if n.strip()]
    limit = raise_fd_limit()
    print(machine())
    print(f"open-file limit of this client: {limit}")
    if max(levels, default=0) + 50 > limit:
        sys.exit(f"--slow {max(levels)} needs more descriptors than this process may open ({limit})")
    extra = ["--model", args.model]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.api_key:
        extra += ["--api-key", args.api_key]
    extra += args.server_arg
    if not args.url:
        check_model(args.sembase, args.model)
    body = json.dumps({"input": "How do I reset the password of my account?"}).encode()
    result = {}

    def with_server(work):
        """Runs `work(url, pid)` on --url, or on a server started here for it."""
        if args.url:
            print(f"server: {args.url} (started elsewhere; "
                  + (f"pid {args.pid}, open-file limit {fd_limit(args.pid)})" if args.pid else "pid not given: no fds/RSS)"))
            wait_ready(*split_url(args.url), args.api_key)
            return work(args.url, args.pid)
        server = Server(args.sembase, extra)
        print(server.describe())
        try:
            wait_ready(*split_url(server.url), args.api_key)
            return work(server.url, server.pid)
        finally:
            print(f"server exit after SIGTERM: {server.stop()}")

    if not args.skip_slowloris:
        def slow_part(url, pid):
            return [asyncio.run(slowloris_level(url, pid, args.api_key, n, args.hold, args.trickle_seconds, body))
                    for n in levels]
        result["slowloris"] = with_server(slow_part)
    if not args.skip_starvation:
        def starve_part(url, pid):
            return asyncio.run(starvation(url, args.api_key, None, args.small_clients, args.baseline_seconds,
                                          args.large_inputs, args.large_tokens, args.large_timeout))
        result["starvation"] = with_server(starve_part)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
