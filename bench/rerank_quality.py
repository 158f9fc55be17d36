#!/usr/bin/env python3
"""Cross-encoder rerankers: `sembase train cross-encoder` and `sembase eval --rerank` against
sentence-transformers' CrossEncoder trained and run with the same recipe, in one run.

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python bench/rerank_quality.py [--setup zh|en|all] [--steps 300] [--queries 300]
        [--depths 10,20,50] [--skip-sembase] [--reuse-peer] [--sembase BIN]

Setups:
  zh  bi-encoder multilingual-e5-small ("query: " before queries, "passage: " before documents,
      as its model card says) on zh/retrieval/lcqmc; cross-encoder trained from
      multilingual-e5-small on zh/lcqmc/dev.tsv (sentence1, sentence2, 0/1 label).
  en  bi-encoder all-minilm-l6-v2 on en/retrieval/msmarco-5k; cross-encoder trained from
      all-minilm-l6-v2 on en/snli-triplets/train.tsv turned into pairs (anchor, positive, 1) and
      (anchor, negative, 0): balanced labels and 5886 pairs, more than 300 steps of 16 use, so no
      pair is seen twice (mrpc/train.tsv is two-thirds positives). Written to bench/out/rerank/en/.
The cross-encoders see the raw texts, without the e5 prefixes, in training and in reranking.

Per setup:
1. Training, the same recipe for both trainers: BCE on the logit, batch 16, lr 2e-5, 10% linear
   warm-up then linear decay to 0 at --steps, AdamW (weight decay 0.01, none on biases and norm
   weights), gradient clipping at 1.0, dropout on, max length 128, seed 42. sembase:
   `sembase train cross-encoder` (its default threads), timed as a process, with its JSON's
   step time where it reports one. The peer: `CrossEncoder(base, num_labels=1, max_length=128)`
   and `BinaryCrossEntropyLoss` in a plain PyTorch loop (CrossEncoderTrainer needs `datasets`
   and `accelerate`, which bench/requirements.txt does not pull in), torch threads 2, each step
   timed from tokenization to the optimiser update (model load excluded).
2. Quality on a seeded subset of --queries queries (corpus unchanged), written once as a BEIR
   folder under bench/out/rerank/SETUP/ and used by every row: `sembase eval --rerank CE
   --rerank-depth K` with each trained cross-encoder and each K of --depths, and a pure-Python
   row: the sentence-transformers bi-encoder's exact top K (cosine), reordered by
   `CrossEncoder.predict` of the peer's cross-encoder, scored with pytrec_eval (ndcg_cut_10,
   recip_rank over the top 10 = MRR@10, recall_10). Figures are x100.
3. Rerank speed: pairs per second of `sembase eval --rerank` (its JSON's pairs / seconds) with
   the peer's cross-encoder at the deepest K, against `CrossEncoder.predict(batch_size=32)`
   on the Python pipeline's candidates at the same K (same queries and depth, so the same number
   of pairs; one warm-up batch first).

Needs the packages of bench/requirements.txt, the release binary (`cargo build --release`;
--sembase or SEMBASE_BIN names another; not used with --skip-sembase), the data in
../shared/data beside the repository (SEMBASE_DATA names another) and the models in the store,
$SEMBASE_HOME (default ~/.cache/sembase): `target/release/sembase model pull NAME`.
Everything goes to bench/out/rerank/: subsets, trained models, JSON reports, summary.json.
--reuse-peer loads a peer cross-encoder trained earlier with the same recipe instead of
training it again.
"""
import os

THREADS = 2
# Thread pools read these when the libraries load, so they are set before the imports.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from train_quality import print_table  # noqa: E402  (bench/ is on sys.path when run as a script)
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytrec_eval  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import CrossEncoder, SentenceTransformer  # noqa: E402
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEMBASE_DATA", REPO.parent / "shared" / "data"))
SEMBASE_HOME = Path(os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase")
DEFAULT_SEMBASE = Path(os.environ.get("SEMBASE_BIN", REPO / "target" / "release" / "sembase"))
OUT = REPO / "bench" / "out" / "rerank"
METRICS = ("ndcg@10", "mrr@10", "recall@10")
TREC_MEASURES = {"ndcg@10": "ndcg_cut_10", "mrr@10": "recip_rank", "recall@10": "recall_10"}
CUTOFF = 10
PREDICT_BATCH = 32
SEED = 42
BUSY_LOAD = 0.5
TRAINER_LABELS = {"sembase": "sembase", "peer": "ST"}
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Setup:
    """One bi-encoder, its retrieval set and the training data of its cross-encoder."""
    name: str
    base: str
    retrieval: Path
    query_prefix: str = ""
    doc_prefix: str = ""


SETUPS = {
    "zh": Setup("zh", "multilingual-e5-small", DATA / "zh/retrieval/lcqmc", "query: ", "passage: "),
    "en": Setup("en", "all-minilm-l6-v2", DATA / "en/retrieval/msmarco-5k"),
}


# ---------------------------------------------------------------- environment

def cpu_features():
    """The CPU's name, the SIMD flags the kernels may use, and torch's chosen capability."""
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "machine": platform.machine(), "cores": os.cpu_count(),
            "flags": [f for f in CPU_FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def environment(args):
    """What the figures were measured with; printed first."""
    env = {**cpu_features(), "torch_threads": THREADS, "load_average_at_start": os.getloadavg()[0],
           "sembase": None if args.skip_sembase else str(args.sembase),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "sentence_transformers": sentence_transformers.__version__}}
    print(f"CPU: {env['cpu']} ({env['machine']}, {env['cores']} cores); features: {' '.join(env['flags'])}; "
          f"torch capability {env['torch_cpu_capability']}, {THREADS} torch threads", flush=True)
    if env["load_average_at_start"] > BUSY_LOAD:
        print(f"warning: load average {env['load_average_at_start']:.2f} before starting; other work slows "
              f"every timing", flush=True)
    return env


# ---------------------------------------------------------------- sembase

def sembase(binary, *args):
    """Runs one sembase command; returns its wall seconds."""
    cmd = [str(binary), *map(str, args)]
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    began = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - began


def model_dir(name, args):
    """The store directory of a model, pulled by sembase when missing (and sembase is in use)."""
    path = SEMBASE_HOME / "models" / name
    if not (path / "model.safetensors").exists():
        if args.skip_sembase:
            raise SystemExit(f"{name} is not in {SEMBASE_HOME / 'models'}: run `target/release/sembase model pull {name}`")
        sembase(args.sembase, "model", "pull", name)
    return path


def sembase_train(args, config, output):
    """`sembase train cross-encoder` with the recipe; its JSON report plus wall and step seconds.
    With --reuse-sembase, a model trained earlier into `output` (same command) is kept."""
    report_path = output.with_suffix(".train.json")
    if args.reuse_sembase and report_path.exists() and (output / "model.safetensors").exists():
        print(f"  reusing the sembase cross-encoder in {output}", file=sys.stderr, flush=True)
        report = json.loads(report_path.read_text())
        return {"wall_s": None, "steps": report.get("steps"), "loss": report.get("loss", []),
                "step_s": report.get("step_seconds_median"), "step_s_source": "step_seconds_median", "reused": True}
    wall = sembase(args.sembase, "train", "cross-encoder", "--model", config["base"], "--data", config["data"],
                   "--output", output, "--max-steps", config["steps"], "--batch-size", config["batch"],
                   "--lr", config["lr"], "--max-length", config["max_length"], "--seed", config["seed"],
                   "--json", report_path)
    report = json.loads(report_path.read_text())
    step_s = report.get("step_seconds_median")
    return {**report, "wall_s": wall, "loss": report.get("loss", []),
            "step_s": step_s if step_s is not None else wall / (report.get("steps") or config["steps"]),
            "step_s_source": "step_seconds_median" if step_s is not None else "process wall / steps (load included)"}


def sembase_eval(args, setup, bi_dir, folder, ce_dir, depth, out_json):
    """`sembase eval --rerank` of one cross-encoder at one depth: the retrieval result row."""
    cmd = ["eval", "--model", bi_dir, "--task", f"retrieval:{folder}", "--rerank", ce_dir,
           "--rerank-depth", depth, "--json", out_json]
    if setup.query_prefix:
        cmd += ["--query-prefix", setup.query_prefix]
    if setup.doc_prefix:
        cmd += ["--doc-prefix", setup.doc_prefix]
    sembase(args.sembase, *cmd)
    return json.loads(Path(out_json).read_text())["results"][0]


# ---------------------------------------------------------------- data

def read_jsonl(path):
    """The objects of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path):
    """{query id: {corpus id: grade}} from a BEIR qrels file (header line optional)."""
    qrels = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            query, doc, grade = line.rstrip("\n").split("\t")
            if grade.lstrip("-").isdigit():
                qrels.setdefault(query, {})[doc] = int(grade)
    return qrels


def write_subset(source, target, count, seed=SEED):
    """A BEIR folder with `count` judged queries drawn with `seed` (all when there are fewer),
    in their original order; the corpus is a link to the original. Returns the folder."""
    queries = read_jsonl(source / "queries.jsonl")
    qrels = read_qrels(source / "qrels" / "test.tsv")
    judged = [q["_id"] for q in queries if q["_id"] in qrels]
    keep = set(random.Random(seed).sample(judged, min(count, len(judged))))
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = target / "corpus.jsonl"
    if not corpus.exists():
        corpus.symlink_to((source / "corpus.jsonl").resolve())
    with open(target / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in queries if q["_id"] in keep)
    with open(target / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{g}\n" for q in judged if q in keep for d, g in qrels[q].items())
    return target


def snli_pairs(target):
    """en/snli-triplets/train.tsv as labelled pairs: (anchor, positive, 1), (anchor, negative, 0)."""
    lines = (DATA / "en/snli-triplets/train.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["anchor", "positive", "negative"], "unexpected snli-triplets header"
    rows = ["sentence1\tsentence2\tlabel"]
    for line in lines[1:]:
        anchor, positive, negative = line.split("\t")
        rows += [f"{anchor}\t{positive}\t1", f"{anchor}\t{negative}\t0"]
    target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return target


def training_data(setup, workdir):
    """The cross-encoder's training pairs file of a setup."""
    if setup.name == "zh":
        return DATA / "zh/lcqmc/dev.tsv"
    return snli_pairs(workdir / "snli-train-pairs.tsv")


def read_pairs(path):
    """(sentence1, sentence2, label) rows of a pairs TSV with a header."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [(a, b, float(label)) for a, b, label in (line.split("\t") for line in lines[1:] if line)]


# ---------------------------------------------------------------- the peer's training

def recipe(base, data, steps):
    """The training recipe both trainers get."""
    return {"base": str(base), "data": str(data), "steps": steps, "batch": 16, "lr": 2e-5, "max_length": 128,
            "seed": SEED, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0}


def linear_schedule(optimizer, steps, warmup_ratio):
    """Linear warm-up over the first share of the steps, then linear decay to 0."""
    warmup = round(steps * warmup_ratio)

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0, steps - step) / max(1, steps - warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches(rows, size, seed):
    """Endless shuffled batches, reshuffled every epoch; a last partial batch is dropped."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            yield [rows[i] for i in order[start:start + size]]


def peer_train(config, output):
    """Trains a sentence-transformers CrossEncoder with the recipe and saves it to `output`."""
    torch.manual_seed(config["seed"])
    started = time.perf_counter()
    model = CrossEncoder(config["base"], num_labels=1, max_length=config["max_length"], device="cpu")
    load_s = time.perf_counter() - started
    loss = BinaryCrossEntropyLoss(model)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config["lr"], betas=(0.9, 0.999), eps=1e-8)
    scheduler = linear_schedule(optimizer, config["steps"], config["warmup_ratio"])
    model.train()
    step_seconds, curve = [], []
    source = batches(read_pairs(config["data"]), config["batch"], config["seed"])
    for step in range(1, config["steps"] + 1):
        batch = next(source)
        began = time.perf_counter()
        value = loss([[a for a, _, _ in batch], [b for _, b, _ in batch]],
                     torch.tensor([y for _, _, y in batch]))
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - began)
        curve.append([step, value.item()])
        if step % 25 == 0:
            print(f"  peer step {step}/{config['steps']} loss {value.item():.4f} "
                  f"({statistics.median(step_seconds):.3f} s/step)", file=sys.stderr, flush=True)
    model.save(str(output))
    return {"recipe": config, "steps": config["steps"], "wall_s": time.perf_counter() - started, "load_s": load_s,
            "train_s": sum(step_seconds),
            "step_s": statistics.median(step_seconds), "step_s_mean": statistics.mean(step_seconds), "loss": curve}


def peer_model(config, output, reuse):
    """The peer's cross-encoder directory and training report: trained now, or with `reuse`
    the one saved earlier when its recipe is this one."""
    report_path = output.with_suffix(".train.json")
    if reuse and report_path.exists() and (output / "model.safetensors").exists():
        report = json.loads(report_path.read_text())
        if report["recipe"] == config:
            print(f"  reusing the peer cross-encoder in {output}", file=sys.stderr, flush=True)
            return {**report, "reused": True}
        print(f"  {output} was trained with another recipe: training again", file=sys.stderr, flush=True)
    report = peer_train(config, output)
    report_path.write_text(json.dumps(report, indent=1))
    return {**report, "reused": False}


# ---------------------------------------------------------------- the pure-Python pipeline

def trec_scores(qrels, ranked):
    """nDCG@10, MRR@10 and recall@10 (x100) of ranked lists {query: [doc ids]}, by pytrec_eval,
    averaged over every judged query."""
    run = {q: {d: float(CUTOFF - i) for i, d in enumerate(docs[:CUTOFF])} for q, docs in ranked.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(TREC_MEASURES.values()))
    per_query = evaluator.evaluate(run)
    return {name: 100.0 * sum(per_query.get(q, {}).get(measure, 0.0) for q in qrels) / len(qrels)
            for name, measure in TREC_MEASURES.items()}


def bi_encoder_candidates(bi_dir, setup, folder, depth):
    """Each query's `depth` nearest documents by cosine: ({query id: [doc ids]}, doc texts, query texts)."""
    corpus = read_jsonl(folder / "corpus.jsonl")
    queries = read_jsonl(folder / "queries.jsonl")
    docs = {d["_id"]: f"{d['title']} {d['text']}" if d.get("title") else d["text"] for d in corpus}
    model = SentenceTransformer(str(bi_dir), device="cpu")

    def encode(texts):
        return model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)

    doc_ids = list(docs)
    doc_vectors = encode([setup.doc_prefix + docs[d] for d in doc_ids])
    query_vectors = encode([setup.query_prefix + q["text"] for q in queries])
    order = np.argsort(-(query_vectors @ doc_vectors.T), axis=1, kind="stable")[:, :depth]
    ranked = {q["_id"]: [doc_ids[j] for j in row] for q, row in zip(queries, order)}
    return ranked, docs, {q["_id"]: q["text"] for q in queries}


def python_rerank(bi_dir, ce_dir, setup, folder, depths):
    """The whole pipeline in sentence-transformers: bi-encoder alone, reranked at each depth,
    and the cross-encoder's pairs per second on the deepest candidates."""
    qrels = read_qrels(folder / "qrels" / "test.tsv")
    ranked, docs, query_texts = bi_encoder_candidates(bi_dir, setup, folder, max(depths))
    pairs = [(query_texts[q], docs[d]) for q, ids in ranked.items() for d in ids]
    model = CrossEncoder(str(ce_dir), max_length=128, device="cpu")
    model.predict(pairs[:PREDICT_BATCH], batch_size=PREDICT_BATCH)
    began = time.perf_counter()
    scores = model.predict(pairs, batch_size=PREDICT_BATCH)
    seconds = time.perf_counter() - began
    score_of = dict(zip(((q, d) for q, ids in ranked.items() for d in ids), scores.tolist()))
    rows = {"before": trec_scores(qrels, ranked)}
    for depth in depths:
        reranked = {q: sorted(ids[:depth], key=lambda d: -score_of[(q, d)]) + ids[depth:] for q, ids in ranked.items()}
        rows[depth] = trec_scores(qrels, reranked)
    return {"rows": rows, "speed": {"pairs": len(pairs), "seconds": seconds, "pairs_per_s": len(pairs) / seconds,
                                    "depth": max(depths)}}


# ---------------------------------------------------------------- one setup

def run_setup(setup, args):
    """Trains, evaluates and times one setup; prints its table; returns its figures."""
    workdir = OUT / setup.name
    workdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    began = time.time()
    base = model_dir(setup.base, args)
    folder = write_subset(setup.retrieval, workdir / f"retrieval-q{args.queries}", args.queries)
    config = recipe(base, training_data(setup, workdir), args.steps)
    ce = {"peer": workdir / f"peer-ce-steps{args.steps}"}
    train = {"peer": peer_model(config, ce["peer"], args.reuse_peer)}
    timings["peer training"] = time.time() - began
    if not args.skip_sembase:
        began = time.time()
        ce["sembase"] = workdir / f"sembase-ce-steps{args.steps}"
        train["sembase"] = sembase_train(args, config, ce["sembase"])
        timings["sembase training"] = time.time() - began
    began = time.time()
    python = python_rerank(base, ce["peer"], setup, folder, args.depths)
    timings["python pipeline"] = time.time() - began
    evals = {}
    if not args.skip_sembase:
        began = time.time()
        evals = {(trainer, depth): sembase_eval(args, setup, base, folder, ce[trainer], depth,
                                                workdir / f"eval-{trainer}-ce-k{depth}.json")
                 for trainer in ("sembase", "peer") for depth in args.depths}
        timings["sembase evals"] = time.time() - began
    figures = {"bi_encoder": setup.base, "retrieval": str(folder), "queries": count_lines(folder / "queries.jsonl"),
               "training_data": config["data"], "recipe": config, "training": train, "python": python,
               "sembase_eval": {f"{t}-ce@{k}": r for (t, k), r in evals.items()}, "timings_s": timings}
    figures["ratios"] = ratios(train, python, evals, args.depths)
    print_setup(setup, figures, evals, args.depths)
    return figures


def count_lines(path):
    """Non-empty lines of a file."""
    return sum(1 for line in open(path, encoding="utf-8") if line.strip())


def ratios(train, python, evals, depths):
    """sembase against the peer: step time (below 1: sembase faster) and pairs/s (above 1: faster)."""
    if "sembase" not in train:
        return {}
    rerank = evals[("peer", max(depths))]["rerank"]
    sembase_pairs_per_s = rerank["pairs"] / rerank["seconds"]
    return {"step_time_sembase_over_peer": train["sembase"]["step_s"] / train["peer"]["step_s"],
            "sembase_pairs_per_s": sembase_pairs_per_s,
            "pairs_per_s_sembase_over_peer": sembase_pairs_per_s / python["speed"]["pairs_per_s"]}


# ---------------------------------------------------------------- printing



def metric_row(label, metrics):
    """A table row of the three metrics."""
    return [label] + [f"{metrics[m]:.2f}" for m in METRICS]


def tail_loss(curve):
    """Mean loss over the last tenth of a loss curve [[step, value], ...]."""
    tail = curve[-max(1, len(curve) // 10):]
    return statistics.mean(v for _, v in tail) if tail else float("nan")


def print_setup(setup, figures, evals, depths):
    """The setup's quality table, then its training and rerank-speed lines."""
    python = figures["python"]
    rows = []
    if evals:
        rows.append(metric_row("bi-encoder alone (sembase eval)", evals[("peer", depths[0])]["before"]))
    rows.append(metric_row("bi-encoder alone (Python, ST)", python["rows"]["before"]))
    for trainer in ("sembase", "peer"):
        rows += [metric_row(f"+ {TRAINER_LABELS[trainer]}-trained CE @{k} (sembase eval)", evals[(trainer, k)]["metrics"])
                 for k in depths if (trainer, k) in evals]
    rows += [metric_row(f"+ ST-trained CE @{k} (Python, ST + pytrec_eval)", python["rows"][k]) for k in depths]
    print_table(f"{setup.name}: {setup.base} on {figures['retrieval']} ({figures['queries']} queries), x100",
                ["row", *METRICS], rows)
    steps = figures["recipe"]["steps"]
    for trainer, report in figures["training"].items():
        source = report.get("step_s_source", "median of timed steps, load excluded")
        note = " (reused from an earlier run)" if report.get("reused") else ""
        print(f"training {TRAINER_LABELS[trainer]}: {steps} steps, {report['step_s']:.3f} s/step ({source}), "
              + (f"{report['wall_s']:.0f} s in all (load and save included), " if report.get("wall_s") else "")
              + f"final-10% loss {tail_loss(report['loss']):.4f}{note}")
    speed = python["speed"]
    print(f"rerank ST CrossEncoder.predict: {speed['pairs']} pairs @{speed['depth']} in {speed['seconds']:.1f} s = "
          f"{speed['pairs_per_s']:.1f} pairs/s")
    r = figures["ratios"]
    if r:
        print(f"rerank sembase: {r['sembase_pairs_per_s']:.1f} pairs/s; sembase / ST pairs/s = "
              f"{r['pairs_per_s_sembase_over_peer']:.2f}x (above 1: sembase faster)")
        earlier = " (ST's step time from an earlier run: --reuse-peer)" if figures["training"]["peer"]["reused"] else ""
        print(f"training: sembase s/step / ST s/step = {r['step_time_sembase_over_peer']:.2f}x "
              f"(below 1: sembase faster){earlier}")
    print("time taken: " + ", ".join(f"{k} {v:.0f} s" for k, v in figures["timings_s"].items()), flush=True)


# ---------------------------------------------------------------- main

def parse_args():
    """Command line, checked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", choices=["zh", "en", "all"], default="all")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of both trainers")
    parser.add_argument("--queries", type=int, default=300, help="queries in the seeded subset (all if fewer)")
    parser.add_argument("--depths", default="10,20,50", help="rerank depths, comma separated")
    parser.add_argument("--skip-sembase", action="store_true", help="run only the peer's parts")
    parser.add_argument("--reuse-peer", action="store_true", help="reuse a peer cross-encoder of the same recipe")
    parser.add_argument("--reuse-sembase", action="store_true",
                        help="reuse a sembase cross-encoder trained earlier into the same output directory")
    parser.add_argument("--sembase", type=Path, default=DEFAULT_SEMBASE, help="sembase binary")
    args = parser.parse_args()
    args.depths = sorted({int(d) for d in args.depths.split(",")})
    if args.depths[0] < CUTOFF:
        parser.error(f"every depth must be at least {CUTOFF} (the metrics' cut-off)")
    if not args.skip_sembase and not args.sembase.exists():
        parser.error(f"{args.sembase} not found (cargo build --release; or --skip-sembase)")
    return args


def main():
    """Runs the chosen setups and writes bench/out/rerank/summary.json."""
    args = parse_args()
    torch.set_num_threads(THREADS)
    transformers.logging.set_verbosity_error()  # load reports: every trained head is new by design
    transformers.logging.disable_progress_bar()
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"environment": environment(args), "setups": {}}
    for name in (["zh", "en"] if args.setup == "all" else [args.setup]):
        summary["setups"][name] = run_setup(SETUPS[name], args)
    summary["environment"]["load_average_at_end"] = os.getloadavg()[0]
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {OUT / 'summary.json'}")


if __name__ == "__main__":
    main()
