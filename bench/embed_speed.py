#!/usr/bin/env python3
"""Side-by-side embedding speed: `sembase embed` against sentence-transformers and
onnxruntime, on all-minilm-l6-v2, 2 threads each, in one run on one machine.

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python bench/embed_speed.py [--model-dir DIR] [--sembase BIN] [--json OUT] [--quick]

The model comes from the store, $SEMBASE_HOME (default ~/.cache/sembase:
`target/release/sembase model pull all-minilm-l6-v2`), the data from ../shared/data beside the
repository, the binary from target/release (`cargo build --release`).

Engines:
- sembase: `sembase embed --model DIR --input IN.jsonl --output OUT.jsonl --threads 2`,
  timed as a whole process (start-up and model load included).
- sentence-transformers: `encode(batch_size=32)`, torch.set_num_threads(2).
- onnxruntime: fp32 ONNX export of the same encoder (cached under --cache-dir),
  intra_op_num_threads=2, batches of 32 sorted by length as sentence-transformers
  sorts them, mean pooling and normalisation in numpy.
The in-process engines get one warm-up call (the first 256 texts) before timing.

Workloads: the 2758 STS-B test sentences (sentence1 column, then sentence2, duplicates
kept) and the first 2000 MS MARCO-5k passages (title + " " + text when there is a
title); newlines become spaces; every engine truncates at 256 tokens. Each figure is
the median of 3 runs; tokens/s counts real tokens (no padding, special tokens in,
after truncation) from the model's HF tokenizer, the same count for every engine.
sembase's and onnxruntime's vectors are checked against sentence-transformers'
(mean and minimum cosine): a speed figure with wrong vectors means nothing.
`--quick`: 1 run, the first 500 texts of each workload.
"""
import os

THREADS = 2
# Thread pools read these when the libraries load, so they are set before the imports.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import sentence_transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
DEFAULT_SEMBASE = REPO_ROOT / "target" / "release" / "sembase"
MODEL_NAME = "all-minilm-l6-v2"
MAX_LENGTH = 256
BATCH_SIZE = 32
RUNS = 3
WARMUP_TEXTS = 256
MSMARCO_PASSAGES = 2000
QUICK_TEXTS = 500
BUSY_LOAD = 0.5
ENGINES = ("sembase", "sentence-transformers", "onnxruntime")
REFERENCE_ENGINE = "sentence-transformers"


def default_model_dir():
    """$SEMBASE_HOME/models/all-minilm-l6-v2 (SEMBASE_HOME defaults to ~/.cache/sembase)."""
    home = os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase"
    return Path(home) / "models" / MODEL_NAME


def one_line(text):
    """A text with its line breaks replaced by spaces."""
    return re.sub(r"\r\n|[\r\n]", " ", text)


def stsb_sentences(data_root):
    """All STS-B test sentences: the sentence1 column, then sentence2."""
    lines = (data_root / "en" / "stsb" / "test.tsv").read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


def msmarco_passages(data_root, count):
    """The first `count` MS MARCO-5k passages as title + " " + text."""
    passages = []
    with (data_root / "en" / "retrieval" / "msmarco-5k" / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            passages.append(f"{row['title']} {row['text']}" if row["title"] else row["text"])
            if len(passages) == count:
                break
    return passages


def load_workloads(data_root, limit):
    """Workload name -> texts (newlines replaced), cut to `limit` texts if given."""
    workloads = {
        "stsb-test": stsb_sentences(data_root),
        "msmarco-2000": msmarco_passages(data_root, MSMARCO_PASSAGES),
    }
    return {name: [one_line(t) for t in texts[:limit]] for name, texts in workloads.items()}


def real_tokens(tokenizer, texts):
    """Tokens the model sees, special tokens included, no padding, after truncation."""
    encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=False)
    return sum(len(ids) for ids in encoded["input_ids"])


def unit_rows(matrix):
    """Rows scaled to unit length."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def cosine_summary(vectors, reference):
    """Mean and minimum row-wise cosine between two matrices."""
    cosines = (unit_rows(vectors) * unit_rows(reference)).sum(axis=1)
    return {"mean": float(cosines.mean()), "min": float(cosines.min())}


class SentenceTransformersEngine:
    """sentence-transformers on CPU."""

    def __init__(self, model_dir):
        torch.set_num_threads(THREADS)
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.model.max_seq_length = MAX_LENGTH

    def encode(self, texts):
        """Normalised embeddings, in input order."""
        return self.model.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True)


class _LastHiddenState(torch.nn.Module):
    """Wraps a transformers encoder so that the export has one plain output."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).last_hidden_state


def export_onnx(model_dir, tokenizer, cache_dir):
    """Path of an fp32 ONNX export of the encoder, exported once per weights file."""
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    path = cache_dir / f"{model_dir.name}-{digest}.onnx"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    sample = tokenizer(["a short one", "a somewhat longer sample sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    partial = path.with_suffix(".partial")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            _LastHiddenState(encoder), tuple(sample[n] for n in names), str(partial),
            input_names=names, output_names=["last_hidden_state"],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                          "last_hidden_state": {0: "batch", 1: "sequence"}},
            opset_version=17, dynamo=False,
        )
    partial.rename(path)
    return path


class OnnxRuntimeEngine:
    """onnxruntime fp32 on the exported encoder; pooling and normalisation in numpy."""

    def __init__(self, model_dir, cache_dir):
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = export_onnx(model_dir, self.tokenizer, cache_dir)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode_batch(self, texts):
        """Mean-pooled, normalised embeddings of one padded batch."""
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
        feeds = {name: encoded[name].astype(np.int64) for name in self.inputs}
        states = self.session.run(None, feeds)[0]
        mask = encoded["attention_mask"].astype(np.float32)[:, :, None]
        pooled = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts):
        """Embeddings in input order, computed in batches sorted longest first."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [order[start:start + BATCH_SIZE] for start in range(0, len(texts), BATCH_SIZE)]
        sorted_vectors = np.concatenate([self.encode_batch([texts[i] for i in rows]) for rows in batches])
        vectors = np.empty_like(sorted_vectors)
        vectors[order] = sorted_vectors
        return vectors


def time_in_process(engine, texts, runs):
    """Wall seconds of each timed run after one warm-up, and the last run's vectors."""
    engine.encode(texts[:WARMUP_TEXTS])
    seconds, vectors = [], None
    for _ in range(runs):
        start = time.perf_counter()
        vectors = engine.encode(texts)
        seconds.append(time.perf_counter() - start)
    return seconds, vectors


def read_sembase_output(path, count):
    """Embeddings from `sembase embed` JSONL output, checked to cover every input once."""
    vectors = [None] * count
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                index = row["index"]
                if not 0 <= index < count or vectors[index] is not None:
                    sys.exit(f"embed_speed: sembase output has a bad or repeated index {index}")
                vectors[index] = row["embedding"]
    missing = [i for i, v in enumerate(vectors) if v is None]
    if missing:
        sys.exit(f"embed_speed: sembase output lacks {len(missing)} of {count} inputs (first: {missing[0]})")
    return np.asarray(vectors, dtype=np.float32)


def time_sembase(binary, model_dir, texts, runs):
    """Wall seconds of each whole `sembase embed` process, and the last run's vectors."""
    with tempfile.TemporaryDirectory(prefix="sembase-bench-") as tmp:
        source, target = Path(tmp) / "input.jsonl", Path(tmp) / "output.jsonl"
        source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        command = [str(binary), "embed", "--model", str(model_dir), "--input", str(source),
                   "--output", str(target), "--threads", str(THREADS)]
        seconds = []
        for _ in range(runs):
            target.unlink(missing_ok=True)
            start = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            seconds.append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"embed_speed: {' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return seconds, read_sembase_output(target, len(texts))


def figures(seconds, sentences, tokens):
    """Throughput figures from the runs' wall times."""
    median = statistics.median(seconds)
    return {"seconds": [round(s, 4) for s in seconds], "median_s": round(median, 4),
            "sentences_per_s": round(sentences / median, 2), "tokens_per_s": round(tokens / median, 1)}


def measure(args, workloads, tokenizer):
    """Time every chosen engine on every workload; check vectors against the reference."""
    runs = 1 if args.quick else RUNS
    reference = SentenceTransformersEngine(args.model_dir)
    engines = {REFERENCE_ENGINE: reference}
    if "onnxruntime" in args.engines:
        engines["onnxruntime"] = OnnxRuntimeEngine(args.model_dir, args.cache_dir)
    report = {}
    for name, texts in workloads.items():
        tokens = real_tokens(tokenizer, texts)
        row = {"sentences": len(texts), "tokens": tokens, "engines": {}}
        timed = {engine_name: time_in_process(engine, texts, runs) for engine_name, engine in engines.items()}
        if "sembase" in args.engines:
            timed["sembase"] = time_sembase(args.sembase, args.model_dir, texts, runs)
        reference_vectors = timed[REFERENCE_ENGINE][1]
        for engine_name in ENGINES:
            if engine_name in timed:
                seconds, vectors = timed[engine_name]
                row["engines"][engine_name] = figures(seconds, len(texts), tokens)
                if engine_name != REFERENCE_ENGINE:
                    row["engines"][engine_name]["cosine_vs_st"] = cosine_summary(vectors, reference_vectors)
        row["sembase_ratio"] = sembase_ratios(row["engines"])
        report[name] = row
        print_workload(name, row)
    return report


def sembase_ratios(engine_figures):
    """sembase's throughput divided by each peer's (above 1: sembase is faster)."""
    if "sembase" not in engine_figures:
        return {}
    ours = engine_figures["sembase"]["sentences_per_s"]
    return {peer: round(ours / f["sentences_per_s"], 3) for peer, f in engine_figures.items() if peer != "sembase"}


def print_workload(name, row):
    """One workload's figures, printed as soon as they are known."""
    print(f"\n{name}: {row['sentences']} texts, {row['tokens']} tokens", flush=True)
    for engine_name, f in row["engines"].items():
        cosine = f.get("cosine_vs_st")
        check = f"  cos vs ST mean {cosine['mean']:.7f} min {cosine['min']:.7f}" if cosine else ""
        print(f"  {engine_name:<22} {f['sentences_per_s']:>9.1f} sent/s {f['tokens_per_s']:>10.0f} tok/s"
              f"  median {f['median_s']:.3f}s{check}", flush=True)
    for peer, ratio in row["sembase_ratio"].items():
        print(f"  sembase / {peer}: {ratio:.2f}x", flush=True)


def print_table(report):
    """The compact summary table."""
    print("\nworkload       engine                   sent/s      tok/s  vs sembase  cos mean  cos min")
    for name, row in report.items():
        for engine_name, f in row["engines"].items():
            ratio = row["sembase_ratio"].get(engine_name)
            ratio_text = f"{ratio:>9.2f}x" if ratio else f"{'':>10}"
            cosine = f.get("cosine_vs_st", {})
            cos_text = f"{cosine['mean']:.7f} {cosine['min']:.7f}" if cosine else "reference"
            print(f"{name:<14} {engine_name:<22} {f['sentences_per_s']:>8.1f} {f['tokens_per_s']:>10.0f} "
                  f"{ratio_text}  {cos_text}")
    print("(vs sembase: sembase's sentences/s divided by that engine's; sembase timed as a whole process)")


def environment(args):
    """What the figures were measured with."""
    return {
        "model_dir": str(args.model_dir), "threads": THREADS, "max_length": MAX_LENGTH,
        "batch_size": BATCH_SIZE, "runs": 1 if args.quick else RUNS, "quick": args.quick,
        "cpu": cpu_name(), "machine": platform.machine(), "load_average_at_start": os.getloadavg()[0],
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__,
                     "onnxruntime": ort.__version__, "numpy": np.__version__},
    }


def cpu_name():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args():
    """Command line, checked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=default_model_dir(), help="all-minilm-l6-v2 directory")
    parser.add_argument("--sembase", type=Path, default=DEFAULT_SEMBASE, help="sembase binary")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="shared data root")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "sembase-bench",
                        help="where the ONNX export is cached")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {','.join(ENGINES)} ({REFERENCE_ENGINE} always runs)")
    parser.add_argument("--json", type=Path, help="write the figures here as one JSON object")
    parser.add_argument("--quick", action="store_true", help=f"1 run, first {QUICK_TEXTS} texts of each workload")
    args = parser.parse_args()
    args.engines = set(args.engines.split(",")) | {REFERENCE_ENGINE}
    unknown = args.engines - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s): {', '.join(sorted(unknown))}")
    if not (args.model_dir / "model.safetensors").exists():
        parser.error(f"no model.safetensors in {args.model_dir}: run `target/release/sembase model pull {MODEL_NAME}`")
    if "sembase" in args.engines and not args.sembase.exists():
        parser.error(f"{args.sembase} not found (build it: cargo build --release; or --engines without sembase)")
    return args


def main():
    """Measure, print the table, write the JSON."""
    args = parse_args()
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(f"warning: load average {load:.2f} before starting; other work will slow every engine", flush=True)
    workloads = load_workloads(args.data_root, QUICK_TEXTS if args.quick else None)
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    report = {"environment": environment(args), "workloads": measure(args, workloads, tokenizer)}
    report["environment"]["load_average_at_end"] = os.getloadavg()[0]
    print_table(report["workloads"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
