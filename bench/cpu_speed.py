#!/usr/bin/env python3
"""CPU encoder speed: `sembase embed` against onnxruntime fp32 and int8, and the GEMM peak.

    make bench-cpu ARGS=--quick    # from a fresh clone: the release build, the two models,
                                   # .venv-bench (make bench-env), then this script with ARGS
    .venv-bench/bin/python bench/cpu_speed.py [--models all-minilm-l6-v2,multilingual-e5-small]
        [--workloads stsb,msmarco] [--repeats 3] [--threads 2] [--quick] [--json OUT]

First printed (and in --json's "environment"): the CPU model, its flags that choose kernels
(KERNEL_FLAGS), the line in which `sembase embed` names the CPU kernels it runs, and the
onnxruntime, torch and numpy versions, so that figures from different machines can be told apart.

Measures, on this machine and with the same thread count for every engine, real tokens per
second of each model on each workload:
- sembase fp32: `sembase embed --model NAME --input FILE --output OUT.npy --threads T` (a copy
  of target/release/sembase taken at start, so a rebuild during the run changes nothing), wall
  time minus the start-up time (the fastest of 5 one-line runs: a noisy machine only ever adds
  time, and the smallest estimate of the fixed cost is the one least in sembase's favour);
- ort fp32: the model's transformer exported to ONNX (torch.onnx.export, opset 17, dynamic batch
  and sequence axes, cached under --onnx-dir/<name>/model.onnx), onnxruntime CPU with
  intra_op_num_threads=T, inter_op_num_threads=1, all graph optimisations;
- sembase int8: the same with `--quantize int8` (its own start-up time subtracted);
- ort int8: quantize_dynamic of that file (QInt8 weights, per channel).
The onnxruntime side tokenizes with the model's tokenizer.json (`tokenizers`, no padding,
truncation at min(512, max_seq_length)), sorts by length, runs batches of 32 padded per batch and
mean-pools with the mask; its timing includes tokenization. Tokens are the real (unpadded) tokens
that tokenizer gives, the same count for every engine. Each figure is the median of --repeats
runs after one warm-up run; the engines take turns within each repeat.

Also printed: the cores each timed run kept busy (CPU over wall seconds; well below the thread
count means other work competed, and the figure is not to be trusted); the minimum cosine, over
the first 64 texts of each workload, of sembase and of ort int8 against ort fp32; the fp32 GEMM
peak (best of numpy, torch and an onnxruntime MatMul on 2048^3, T threads); and each engine's share of the FLOP bound,
peak / (2 x the transformer's parameters excluding embeddings; attention's own FLOPs left out).

Workloads: stsb = the 2758 STS-B test sentences (sentence1 column, then sentence2); msmarco = the
first 2000 passages of MS MARCO-5k (title + " " + text when there is a title); whitespace runs
become one space. `--quick`: 1 repeat, the first 500 texts of each workload.

Needs (`make bench-cpu` sees to the first three) the packages of bench/requirements.txt (torch,
transformers, tokenizers, onnxruntime, onnx, numpy, threadpoolctl: `make bench-env`), the release
binary (`cargo build --release`), the models in the store, $SEMBASE_HOME (default
~/.cache/sembase): `target/release/sembase model pull NAME`, and the data in ../shared/data beside
the repository.
"""
import argparse
import hashlib
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer
from transformers import AutoModel

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
# The model store, as sembase finds it: $SEMBASE_HOME, else ~/.cache/sembase.
SEMBASE_HOME = Path(os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase")
MODELS = ("all-minilm-l6-v2", "multilingual-e5-small")
WORKLOADS = ("stsb", "msmarco")
ENGINES = ("sembase fp32", "sembase int8", "ort fp32", "ort int8")
MSMARCO_PASSAGES = 2000
QUICK_TEXTS = 500
BATCH_SIZE = 32
TOKEN_LIMIT = 512
CHECKED_TEXTS = 64
STARTUP_RUNS = 5
GEMM_SIZE = 2048
GEMM_TRIES = 20
SUBPROCESS_TIMEOUT_S = 1800
BUSY_LOAD = 0.5
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
# The /proc/cpuinfo flags that decide which kernels sembase, gemm or onnxruntime's MLAS run:
# x86-64, then aarch64 (asimd = NEON, asimddp = the int8 dot product).
KERNEL_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni", "avx2", "fma", "f16c",
                "asimd", "asimddp", "i8mm", "sve")


def normalise_space(text):
    """The text with every whitespace run made one space, trimmed."""
    return " ".join(text.split())


def stsb_texts():
    """The STS-B test sentences: the sentence1 column, then the sentence2 column."""
    lines = (DATA_ROOT / "en" / "stsb" / "test.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line]
    first, second = header.index("sentence1"), header.index("sentence2")
    return [row[first] for row in rows] + [row[second] for row in rows]


def msmarco_texts():
    """The first MSMARCO_PASSAGES passages of the MS MARCO-5k corpus."""
    texts = []
    with (DATA_ROOT / "en" / "retrieval" / "msmarco-5k" / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(f"{row['title']} {row['text']}" if row.get("title") else row["text"])
            if len(texts) == MSMARCO_PASSAGES:
                break
    return texts


def load_workload(name, limit):
    """A workload's texts, whitespace-normalised, the first `limit` of them when given."""
    texts = {"stsb": stsb_texts, "msmarco": msmarco_texts}[name]()
    return [normalise_space(t) for t in texts[:limit]]


def token_limit(model_dir):
    """The model's max_seq_length (sentence_bert_config.json), at most TOKEN_LIMIT."""
    config = model_dir / "sentence_bert_config.json"
    limit = json.loads(config.read_text())["max_seq_length"] if config.exists() else TOKEN_LIMIT
    return min(limit, TOKEN_LIMIT)


def load_tokenizer(model_dir):
    """The model's tokenizer.json with padding off and truncation at the model's limit."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(token_limit(model_dir))
    return tokenizer


def count_tokens(tokenizer, texts):
    """Real tokens of the texts: special tokens in, no padding, after truncation."""
    return sum(len(e.ids) for e in tokenizer.encode_batch(texts))


class LastHiddenState(torch.nn.Module):
    """A transformers encoder with last_hidden_state as its one output."""

    def __init__(self, encoder, input_names):
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names

    def forward(self, *inputs):
        return self.encoder(**dict(zip(self.input_names, inputs))).last_hidden_state


def load_encoder(model_dir):
    """The model's transformer in eval mode, eager attention (plain ops in the export)."""
    return AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()


def input_names(encoder):
    """The ONNX inputs: input_ids, attention_mask, and token_type_ids when the model takes them."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(encoder.forward).parameters:
        names.append("token_type_ids")
    return names


def export_fp32(encoder, path):
    """Export the encoder to ONNX at `path` (written under a temporary name, then renamed)."""
    names = input_names(encoder)
    sample = {"input_ids": torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
              "token_type_ids": torch.zeros(2, 4, dtype=torch.long)}
    dynamic = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notes of the TorchScript exporter
        torch.onnx.export(LastHiddenState(encoder, names), tuple(sample[n] for n in names), str(partial),
                          input_names=names, output_names=["last_hidden_state"], dynamic_axes=dynamic,
                          opset_version=17, dynamo=False)
    partial.rename(path)


def onnx_files(name, encoder, onnx_dir):
    """Paths of the fp32 export and its int8 quantisation, made once and cached."""
    fp32, int8 = onnx_dir / name / "model.onnx", onnx_dir / name / "model.int8.onnx"
    if not fp32.exists():
        print(f"  exporting {name} to {fp32}", flush=True)
        export_fp32(encoder, fp32)
    if not int8.exists():
        print(f"  quantising {name} to {int8}", flush=True)
        partial = int8.with_name(int8.name + ".partial")
        quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8, per_channel=True)
        partial.rename(int8)
    return fp32, int8


def ort_session(path, threads):
    """An onnxruntime CPU session with `threads` intra-op threads and every graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unit_rows(matrix):
    """Rows scaled to unit length."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


class OrtEncoder:
    """Texts to mean-pooled, normalised vectors with an onnxruntime session."""

    def __init__(self, session, tokenizer, pad_id):
        self.session = session
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.inputs = [i.name for i in session.get_inputs()]

    def run_batch(self, encodings):
        """Pooled, normalised vectors of one batch, padded to its longest text."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = self.session.run(None, {name: feeds[name] for name in self.inputs})[0]
        weights = mask[:, :, None].astype(np.float32)
        return unit_rows((states * weights).sum(axis=1) / weights.sum(axis=1))

    def encode(self, texts):
        """Vectors of the texts in input order, computed in length-sorted batches."""
        encodings = self.tokenizer.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        batches = [order[start:start + BATCH_SIZE] for start in range(0, len(order), BATCH_SIZE)]
        in_sorted_order = np.concatenate([self.run_batch([encodings[i] for i in rows]) for rows in batches])
        vectors = np.empty_like(in_sorted_order)
        vectors[order] = in_sorted_order
        return vectors

    def timed(self, texts):
        """Wall seconds of one encode (tokenization included), and its vectors."""
        start = time.perf_counter()
        vectors = self.encode(texts)
        return time.perf_counter() - start, vectors


def run_embed(binary, model, threads, source, target, extra=()):
    """Wall seconds and stderr of one `sembase embed` process from `source` into `target`."""
    target.unlink(missing_ok=True)
    command = [str(binary), "embed", "--model", model, "--input", str(source),
               "--output", str(target), "--threads", str(threads), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, env={**os.environ, "SEMBASE_HOME": str(SEMBASE_HOME)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"cpu_speed: {' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, done.stderr


def sembase_kernels(binary, model, threads, scratch):
    """The line in which `sembase embed` names the CPU kernels it runs (None from a binary that
    does not print one)."""
    source = scratch / "kernels.txt"
    source.write_text("kernels\n", encoding="utf-8")
    _, stderr = run_embed(binary, model, threads, source, scratch / "kernels.npy")
    return next((line for line in stderr.splitlines() if line.startswith("kernels: ")), None)


def cpu_model_and_features():
    """The CPU's model name, and which of KERNEL_FLAGS it has (from /proc/cpuinfo on Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return model, [flag for flag in KERNEL_FLAGS if flag in flags]


class SembaseRunner:
    """`sembase embed` on one model, as a separate process."""

    def __init__(self, binary, model, threads, scratch, extra=()):
        self.binary = binary
        self.model = model
        self.threads = threads
        self.scratch = scratch
        self.extra = list(extra)
        self.startup_s = min(self.run_file(self.write_texts(["start-up"], "startup"))[0]
                             for _ in range(STARTUP_RUNS))

    def write_texts(self, texts, stem):
        """A file of the texts, one a line."""
        path = self.scratch / f"{stem}.txt"
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        return path

    def run_file(self, source):
        """Wall seconds of one whole `sembase embed` process, and its output matrix."""
        target = self.scratch / "out.npy"
        seconds, _ = run_embed(self.binary, self.model, self.threads, source, target, self.extra)
        return seconds, np.load(target)

    def timer(self, texts, stem):
        """A function timing one run on the texts: seconds less start-up, and the vectors."""
        source = self.write_texts(texts, stem)

        def timed():
            seconds, vectors = self.run_file(source)
            if vectors.shape[0] != len(texts):
                sys.exit(f"cpu_speed: sembase gave {vectors.shape[0]} vectors for {len(texts)} texts")
            return seconds - self.startup_s, vectors
        return timed


def gemm_gflops(matmul, a, b):
    """Best GFLOP/s of `matmul(a, b)` over GEMM_TRIES calls after one warm-up call."""
    matmul(a, b)
    best = float("inf")
    for _ in range(GEMM_TRIES):
        start = time.perf_counter()
        matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * GEMM_SIZE ** 3 / best / 1e9


def ort_matmul(threads):
    """`a @ b` for two GEMM_SIZE^2 float32 matrices as a one-node onnxruntime graph (MLAS kernels,
    which use AVX-512 where the CPU has it; numpy's and torch's BLAS may not)."""
    from onnx import TensorProto, helper
    shape = [GEMM_SIZE, GEMM_SIZE]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with tempfile.TemporaryDirectory(prefix="ort-matmul-") as tmp:
        path = Path(tmp) / "matmul.onnx"
        path.write_bytes(model.SerializeToString())
        session = ort_session(path, threads)
    return lambda a, b: session.run(None, {"a": a, "b": b})[0]


def gemm_peak(threads):
    """fp32 GEMM GFLOP/s of numpy, torch and onnxruntime on `threads` threads (numpy's and torch's
    limits set by the caller), and the best."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32) for _ in range(2))
    figures = {"numpy": gemm_gflops(np.matmul, a, b),
               "torch": gemm_gflops(torch.matmul, torch.from_numpy(a), torch.from_numpy(b)),
               "onnxruntime": gemm_gflops(ort_matmul(threads), a, b)}
    return {**{k: round(v, 1) for k, v in figures.items()}, "peak": round(max(figures.values()), 1)}


def non_embedding_params(encoder):
    """Parameters of the transformer layers: everything but the embeddings and the pooler."""
    return sum(p.numel() for name, p in encoder.named_parameters()
               if not name.startswith(("embeddings.", "pooler.")))


def min_cosine(vectors, reference):
    """Minimum row-wise cosine over the first CHECKED_TEXTS rows."""
    a, b = (unit_rows(m[:CHECKED_TEXTS].astype(np.float64)) for m in (vectors, reference))
    return float((a * b).sum(axis=1).min())


def cpu_seconds():
    """CPU seconds used so far by this process and its finished children."""
    return sum(os.times()[:4])


def time_engines(timers, repeats):
    """Per engine: the timed runs' seconds, the cores each run kept busy on average (CPU seconds over
    wall seconds: below the thread count when other work competes), and the last run's vectors.
    One warm-up run each first; the engines take turns within each repeat, so load drift falls on
    all of them alike."""
    for timed in timers.values():
        timed()
    runs = {name: {"seconds": [], "cores": []} for name in timers}
    vectors = {}
    for _ in range(repeats):
        for name, timed in timers.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            elapsed, vectors[name] = timed()
            runs[name]["cores"].append((cpu_seconds() - cpu) / (time.perf_counter() - wall))
            runs[name]["seconds"].append(elapsed)
    return runs, vectors


def engine_figures(runs, tokens, flop_bound):
    """Throughput of one engine from its runs."""
    median = statistics.median(runs["seconds"])
    return {"seconds": [round(s, 4) for s in runs["seconds"]], "median_s": round(median, 4),
            "cores": [round(c, 2) for c in runs["cores"]], "tokens_per_s": round(tokens / median, 1),
            "flop_bound_share": round(tokens / median / flop_bound, 4)}


def measure_workload(texts, tokens, timers, repeats, flop_bound):
    """Figures of every engine on one workload, ratios to the onnxruntime engines, cosines."""
    runs, vectors = time_engines(timers, repeats)
    engines = {name: engine_figures(runs[name], tokens, flop_bound) for name in ENGINES}
    for figures in engines.values():
        for peer in ("ort fp32", "ort int8"):
            figures[f"vs {peer}"] = round(figures["tokens_per_s"] / engines[peer]["tokens_per_s"], 3)
    cosines = {"sembase vs ort fp32": min_cosine(vectors["sembase fp32"], vectors["ort fp32"]),
               "sembase int8 vs sembase fp32": min_cosine(vectors["sembase int8"], vectors["sembase fp32"]),
               "ort int8 vs ort fp32": min_cosine(vectors["ort int8"], vectors["ort fp32"])}
    return {"texts": len(texts), "tokens": tokens, "engines": engines, "min_cosine": cosines}


def measure_model(name, args, workloads, peak_gflops, sembase, scratch):
    """Every workload of one model: export if needed, then time the three engines."""
    model_dir = SEMBASE_HOME / "models" / name
    encoder = load_encoder(model_dir)
    fp32, int8 = onnx_files(name, encoder, args.onnx_dir)
    params = non_embedding_params(encoder)
    flop_bound = peak_gflops * 1e9 / (2 * params)
    del encoder
    tokenizer = load_tokenizer(model_dir)
    pad_id = json.loads((model_dir / "config.json").read_text()).get("pad_token_id") or 0
    encoders = {engine: OrtEncoder(ort_session(path, args.threads), tokenizer, pad_id)
                for engine, path in (("ort fp32", fp32), ("ort int8", int8))}
    runner = SembaseRunner(sembase, name, args.threads, scratch)
    runner_int8 = SembaseRunner(sembase, name, args.threads, scratch, ["--quantize", "int8"])
    report = {"non_embedding_params": params, "flop_bound_tokens_per_s": round(flop_bound, 1),
              "sembase_startup_s": round(runner.startup_s, 4),
              "sembase_int8_startup_s": round(runner_int8.startup_s, 4), "workloads": {}}
    for workload, texts in workloads.items():
        tokens = count_tokens(tokenizer, texts)
        timers = {"sembase fp32": runner.timer(texts, workload),
                  "sembase int8": runner_int8.timer(texts, workload),
                  **{engine: (lambda e=e: e.timed(texts)) for engine, e in encoders.items()}}
        row = measure_workload(texts, tokens, timers, args.repeats, flop_bound)
        report["workloads"][workload] = row
        print_table(name, workload, row, report)
    return report


def print_table(model, workload, row, report):
    """One model and workload's table, printed as soon as it is measured."""
    print(f"\n{model} / {workload}: {row['texts']} texts, {row['tokens']} tokens; "
          f"FLOP bound {report['flop_bound_tokens_per_s']:.0f} tok/s "
          f"({report['non_embedding_params'] / 1e6:.2f}M non-embedding params); "
          f"sembase start-up {report['sembase_startup_s']:.3f}s (int8 {report['sembase_int8_startup_s']:.3f}s) subtracted",
          flush=True)
    print(f"  {'engine':<13} {'tokens/s':>10} {'vs ort fp32':>12} {'vs ort int8':>12} {'FLOP bound':>11}"
          f"  cores busy per run")
    for engine, f in row["engines"].items():
        print(f"  {engine:<13} {f['tokens_per_s']:>10.0f} {f['vs ort fp32']:>11.2f}x {f['vs ort int8']:>11.2f}x "
              f"{f['flop_bound_share']:>10.1%}  {' '.join(f'{c:.2f}' for c in f['cores'])}")
    for pair, cosine in row["min_cosine"].items():
        print(f"  min cosine, first {CHECKED_TEXTS} texts, {pair}: {cosine:.6f}", flush=True)


def file_digest(path):
    """First 16 hex digits of the file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def git_head():
    """The repository's HEAD commit, or None outside a git checkout."""
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.strip() or None


def environment(args, sembase, kernels):
    """What the figures were measured with; `kernels` is sembase's kernel line."""
    cpu, features = cpu_model_and_features()
    return {"cpu": cpu, "cpu_features": features, "sembase_kernels": kernels, "cores": os.cpu_count(),
            "threads": args.threads, "repeats": args.repeats,
            "quick": args.quick, "batch_size": BATCH_SIZE, "git_head": git_head(),
            "sembase_binary": str(args.sembase), "sembase_sha256_16": file_digest(sembase),
            "load_average_at_start": os.getloadavg()[0],
            "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "numpy": np.__version__}}


def print_environment(env):
    """The machine and the kernels, first, so that figures from different machines can be told apart."""
    versions = env["versions"]
    print(f"cpu: {env['cpu']}, {env['cores']} cores; features: {' '.join(env['cpu_features']) or 'none listed'}")
    print(f"sembase {env['sembase_kernels'] or 'kernels: not reported (a binary older than the kernel line)'}")
    print(f"onnxruntime {versions['onnxruntime']} (torch {versions['torch']}, numpy {versions['numpy']}); "
          f"{env['threads']} threads per engine", flush=True)


def parse_args():
    """The command line, checked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated store names")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="compute threads of every engine")
    parser.add_argument("--quick", action="store_true",
                        help=f"1 repeat, the first {QUICK_TEXTS} texts of each workload")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--sembase", type=Path, default=REPO_ROOT / "target" / "release" / "sembase",
                        help="sembase binary (copied at start)")
    parser.add_argument("--onnx-dir", type=Path, default=REPO_ROOT / "bench" / "out" / "onnx", help="ONNX export cache")
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.workloads = args.workloads.split(",")
    if args.quick:
        args.repeats = 1
    for name in args.models:
        if not (SEMBASE_HOME / "models" / name / "model.safetensors").exists():
            parser.error(f"no model.safetensors for {name} under {SEMBASE_HOME}/models: "
                         f"run `target/release/sembase model pull {name}`")
    if not DATA_ROOT.is_dir():
        parser.error(f"{DATA_ROOT} not found: the workloads' data lies in ../shared/data beside the repository")
    if set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workload(s) in {args.workloads}; known: {','.join(WORKLOADS)}")
    if not args.sembase.exists():
        parser.error(f"{args.sembase} not found (cargo build --release)")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    return args


def main():
    """Measure the GEMM peak, then every model on every workload; print, and write the JSON."""
    args = parse_args()
    for var in THREAD_VARS:
        os.environ[var] = str(args.threads)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    limit = QUICK_TEXTS if args.quick else None
    workloads = {name: load_workload(name, limit) for name in args.workloads}
    with tempfile.TemporaryDirectory(prefix="cpu-speed-") as tmp:
        scratch = Path(tmp)
        sembase = scratch / "sembase"
        shutil.copy2(args.sembase, sembase)
        kernels = sembase_kernels(sembase, args.models[0], args.threads, scratch)
        report = {"environment": environment(args, sembase, kernels)}
        print_environment(report["environment"])
        if load > BUSY_LOAD:
            print(f"warning: load average {load:.2f} at start; other work slows every engine", flush=True)
        with threadpool_limits(limits=args.threads):
            report["gemm_gflops"] = gemm_peak(args.threads)
        gemm = report["gemm_gflops"]
        print(f"fp32 GEMM peak, {args.threads} threads, {GEMM_SIZE}^3: {gemm['peak']:.1f} GFLOP/s "
              f"(numpy {gemm['numpy']:.1f}, torch {gemm['torch']:.1f}, onnxruntime {gemm['onnxruntime']:.1f})", flush=True)
        report["models"] = {name: measure_model(name, args, workloads, gemm["peak"], sembase, scratch)
                            for name in args.models}
    report["environment"]["load_average_at_end"] = os.getloadavg()[0]
    print(f"\nload average: {report['environment']['load_average_at_start']:.2f} at start, "
          f"{report['environment']['load_average_at_end']:.2f} at end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
