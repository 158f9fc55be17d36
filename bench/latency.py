#!/usr/bin/env python3
"""Single-request latency and peak memory of `sembase embed` and `sembase serve`, against onnxruntime.

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python bench/latency.py [--model all-minilm-l6-v2] [--threads 2] [--runs 30]

Needs the release binary (`cargo build --release`), the model in the store, $SEMBASE_HOME (default
~/.cache/sembase; `target/release/sembase model pull NAME`), and GNU time at /usr/bin/time.

One short sentence (SENTENCE, 12 tokens with all-MiniLM-L6-v2's tokenizer), on this machine:
- one-shot process: `sembase embed` (f32, then `--quantize int8`) on a file holding the sentence:
  wall seconds of the whole process and its peak RSS (ru_maxrss), median of --runs / 5 runs with the
  page cache warm. The peer is a Python process that loads the model's ONNX export (the cache
  bench/cpu_speed.py writes) in onnxruntime with the model's tokenizer and encodes the sentence.
- warm server: `sembase serve` answering POST /v1/embeddings for the sentence, one request at a
  time over one kept-alive connection: median and p90 of --runs after WARM_UP requests, and the
  server's peak RSS (VmHWM). The peer is onnxruntime encoding the sentence inside this process
  (tokenizer, session, pooling; no HTTP), with the same statistics.
Ratios are sembase over the peer (below 1: sembase is faster or smaller).
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_speed import (REPO_ROOT, SEMBASE_HOME, THREAD_VARS, OrtEncoder, load_encoder,  # noqa: E402
                       load_tokenizer, onnx_files, ort_session)
from load import rss_kib, start_server  # noqa: E402

SENTENCE = "How do I reset the password of my account?"
TIME = "/usr/bin/time"
WARM_UP = 5

PEER_PROCESS = """
import sys
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
onnx, tokenizer_file, threads, text = sys.argv[1:]
options = ort.SessionOptions()
options.intra_op_num_threads = int(threads)
options.inter_op_num_threads = 1
session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(tokenizer_file)
ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
mask = np.ones_like(ids)
feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
names = [i.name for i in session.get_inputs()]
states = session.run(None, {n: feeds[n] for n in names})[0]
vector = states.mean(axis=1)[0] / np.linalg.norm(states.mean(axis=1)[0])
"""


def timed_process(command):
    """Wall seconds and peak RSS (KiB) of one process run to completion. The RSS comes from
    GNU time: a child forked from this (large) Python process would report this one's."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        done = subprocess.run([TIME, "-f", "%M", "-o", rss.name, *command], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"latency: {' '.join(map(str, command))} failed: {done.stderr[-2000:]}")
        return seconds, int(rss.read().split()[-1])


def one_shot(command, runs):
    """Median wall seconds and the largest peak RSS (KiB) of `runs` runs after one warm-up."""
    timed_process(command)
    results = [timed_process(command) for _ in range(runs)]
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def summary(seconds):
    """Median and p90 of a list of seconds, in milliseconds."""
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1000, ordered[int(0.9 * (len(ordered) - 1))] * 1000


def server_latency(args, extra):
    """(median ms, p90 ms, peak RSS KiB) of `sembase serve` answering the sentence."""
    proc, address = start_server(args, extra)
    try:
        host, port = address.replace("http://", "").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({"model": args.model, "input": [SENTENCE]})
        wait_until_ready(connection)

        def request():
            start = time.perf_counter()
            connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            payload = answer.read()
            if answer.status != 200:
                sys.exit(f"latency: server answered {answer.status}: {payload[:500]!r}")
            return time.perf_counter() - start

        for _ in range(WARM_UP):
            request()
        median, p90 = summary([request() for _ in range(args.runs)])
        peak = rss_kib(proc.pid, "VmHWM")
        if peak is None:
            sys.exit(f"latency: no VmHWM for server process {proc.pid}")
        return median, p90, peak
    finally:
        proc.kill()
        proc.wait()


def wait_until_ready(connection):
    """Polls /health until the models are loaded (it answers 503 before)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        connection.request("GET", "/health")
        answer = connection.getresponse()
        answer.read()
        if answer.status == 200:
            return
        time.sleep(0.05)
    sys.exit("latency: the server did not load its model within 300 s")


def in_process_latency(encoder, runs):
    """(median ms, p90 ms) of onnxruntime encoding the sentence in this process."""
    for _ in range(WARM_UP):
        encoder.encode([SENTENCE])
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        encoder.encode([SENTENCE])
        seconds.append(time.perf_counter() - start)
    return summary(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="server requests timed; one-shot runs are a fifth")
    parser.add_argument("--sembase", type=Path, default=REPO_ROOT / "target" / "release" / "sembase")
    parser.add_argument("--onnx-dir", type=Path, default=REPO_ROOT / "bench" / "out" / "onnx")
    args = parser.parse_args()
    model_dir = SEMBASE_HOME / "models" / args.model
    if not (model_dir / "model.safetensors").exists():
        parser.error(f"no model.safetensors in {model_dir}: run `target/release/sembase model pull {args.model}`")
    if not args.sembase.exists():
        parser.error(f"{args.sembase} not found (cargo build --release)")
    if not Path(TIME).exists():
        parser.error(f"{TIME} not found (GNU time: apt-get install time)")
    for var in THREAD_VARS:
        os.environ[var] = str(args.threads)
    os.environ["SEMBASE_HOME"] = str(SEMBASE_HOME)  # for every sembase process started below
    fp32_onnx, int8_onnx = onnx_files(args.model, load_encoder(model_dir), args.onnx_dir)
    tokenizer = load_tokenizer(model_dir)
    tokens = len(tokenizer.encode(SENTENCE).ids)
    pad_id = json.loads((model_dir / "config.json").read_text()).get("pad_token_id") or 0
    print(f"{args.model}, {args.threads} threads, one sentence of {tokens} tokens: {SENTENCE!r}")

    runs = max(3, args.runs // 5)
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        source, target = Path(tmp) / "one.txt", Path(tmp) / "out.npy"
        source.write_text(SENTENCE + "\n", encoding="utf-8")
        print(f"\none-shot process (median of {runs}; peak RSS the largest)")
        print(f"  {'engine':34} {'seconds':>8} {'peak RSS MiB':>13} {'time ratio':>11} {'RSS ratio':>10}")
        for label, onnx, extra in (("fp32", fp32_onnx, []), ("int8", int8_onnx, ["--quantize", "int8"])):
            ours = one_shot([str(args.sembase), "embed", "--model", args.model, "--input", str(source),
                             "--output", str(target), "--threads", str(args.threads), *extra], runs)
            peer = one_shot([sys.executable, "-c", PEER_PROCESS, str(onnx), str(model_dir / "tokenizer.json"),
                             str(args.threads), SENTENCE], runs)
            for name, (seconds, rss) in ((f"sembase embed {label}", ours), (f"python + onnxruntime {label}", peer)):
                print(f"  {name:34} {seconds:8.3f} {rss / 1024:13.0f}", end="")
                print(f" {ours[0] / peer[0]:10.2f}x {ours[1] / peer[1]:9.2f}x" if name.startswith("python") else "")

    print(f"\nwarm, one request at a time (median and p90 of {args.runs} after {WARM_UP} warm-ups);"
          " serve with its default --max-batch-wait-ms 5 and with 0")
    print(f"  {'engine':38} {'median ms':>9} {'p90 ms':>8} {'peak RSS MiB':>13} {'median ratio':>13}")
    for label, onnx, extra in (("fp32", fp32_onnx, []), ("int8", int8_onnx, ["--quantize", "int8"])):
        encoder = OrtEncoder(ort_session(onnx, args.threads), tokenizer, pad_id)
        peer_median, peer_p90 = in_process_latency(encoder, args.runs)
        for wait in ("5", "0"):
            median, p90, rss = server_latency(args, [*extra, "--max-batch-wait-ms", wait])
            print(f"  {f'sembase serve {label}, wait {wait} ms (HTTP)':38} {median:9.2f} {p90:8.2f} {rss / 1024:13.0f}"
                  f" {median / peer_median:12.2f}x")
        print(f"  {'onnxruntime ' + label + ' (in process)':38} {peer_median:9.2f} {peer_p90:8.2f}")


if __name__ == "__main__":
    main()
