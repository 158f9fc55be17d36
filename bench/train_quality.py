#!/usr/bin/env python3
"""`sembase train` against the same recipe in sentence-transformers (PyTorch), in one run.

Parts (choose with --parts, default all):
  supervised  multilingual-e5-small, CoSENT (`sts`) on zh/atec/train.tsv; ATEC dev and
              LCQMC test Spearman before and after, for sembase and for PyTorch, and
              ATEC dev at 384/256/128/64 dimensions (Matryoshka truncation).
  simcse      multilingual-e5-small, unsupervised SimCSE on zh/corpus/atec-questions.txt
              (no labels); ATEC dev and LCQMC test before and after, for sembase and PyTorch.
  matryoshka  the supervised recipe with --dims 384,256,128,64 (MatryoshkaLoss in
              PyTorch); the same figures.
  speed       all-minilm-l6-v2, SimCSE, batch 64, length 32: median seconds per
              optimiser step and peak RSS of each trainer.
  export      a sembase-trained model (with a projection) loads in sentence-transformers
              and gives the same embeddings as `sembase embed`.

Both trainers use the same data, steps, batch size, learning rate, warm-up (10%, then
linear decay), AdamW (weight decay 0.01, none on biases and layer norms), gradient
clipping at 1.0, temperature 0.05 (scale 20), dropout on. Every trained model, ours and
PyTorch's, is scored by the same `sembase eval`, so the comparison is of the training
alone. Each PyTorch run is a child process, so its peak RSS is its own.

Needs the release binary (`cargo build --release`; SEMBASE_BIN names another), the shared
data (../shared/data beside the repository; SEMBASE_DATA names another) and the packages of
bench/requirements.txt (torch, sentence-transformers, scipy, numpy). The models come from the
store, $SEMBASE_HOME (default ~/.cache/sembase), and are pulled into it when missing
(`target/release/sembase model pull NAME`).

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python bench/train_quality.py [--parts supervised,simcse,matryoshka,speed,export]
"""
import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEMBASE_DATA", REPO.parent / "shared" / "data"))
SEMBASE = Path(os.environ.get("SEMBASE_BIN", REPO / "target" / "release" / "sembase"))
E5 = "multilingual-e5-small"
MINILM = "all-minilm-l6-v2"
E5_PREFIX = "query: "
MATRYOSHKA_DIMS = [384, 256, 128, 64]
ALL_PARTS = ["supervised", "simcse", "matryoshka", "speed", "export"]


# ---------------------------------------------------------------- shared recipe

def recipe(objective, base, data, steps, batch, lr, max_length, threads, seed=42, prefix=None, dims=None, project=None):
    """One training recipe, given to both trainers."""
    return {"objective": objective, "base": str(base), "data": str(data), "steps": steps, "batch": batch,
            "lr": lr, "max_length": max_length, "threads": threads, "seed": seed, "prefix": prefix,
            "dims": dims or [], "project": project, "temperature": 0.05, "warmup_ratio": 0.1,
            "max_grad_norm": 1.0, "weight_decay": 0.01}


def read_examples(objective, path, prefix):
    """Rows as lists of texts plus a score, as `sembase train` reads them."""
    prefix = prefix or ""
    rows = []
    with open(path, encoding="utf-8") as f:
        if objective == "simcse":
            return [([prefix + line.strip()], 0.0) for line in f if line.strip()]
        header = f.readline()
        assert header.startswith("sentence1"), f"{path}: expected a header"
        for line in f:
            a, b, score = line.rstrip("\n").split("\t")
            rows.append(([prefix + a, prefix + b], float(score)))
    return rows


# ---------------------------------------------------------------- PyTorch side

def torch_train(config, output):
    """The recipe in sentence-transformers' losses with a plain PyTorch loop; returns timings."""
    import torch
    from sentence_transformers import SentenceTransformer, losses, models

    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    model = SentenceTransformer(config["base"], device="cpu")
    model.max_seq_length = config["max_length"]
    if config["project"]:
        width = model.get_sentence_embedding_dimension()
        dense = models.Dense(width, config["project"], bias=True, activation_function=torch.nn.Identity())
        model.append(dense)
    scale = 1.0 / config["temperature"]
    if config["objective"] == "sts":
        loss = losses.CoSENTLoss(model, scale=scale)
    elif config["objective"] == "simcse":
        loss = losses.MultipleNegativesRankingLoss(model, scale=scale)
    else:
        raise SystemExit(f"unsupported objective {config['objective']}")
    if config["dims"]:
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=config["dims"])

    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": config["weight_decay"]},
        {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config["lr"], betas=(0.9, 0.999), eps=1e-8)
    total = config["steps"]
    warmup = round(total * config["warmup_ratio"])

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0, total - step) / max(1, total - warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    examples = read_examples(config["objective"], config["data"], config["prefix"])
    rng = random.Random(config["seed"])
    model.train()
    step_seconds, losses_seen, step = [], [], 0
    while step < total:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - config["batch"] + 1, config["batch"]):
            if step >= total:
                break
            began = time.perf_counter()
            batch = [examples[i] for i in order[start:start + config["batch"]]]
            if config["objective"] == "simcse":
                columns = [[t[0] for t, _ in batch], [t[0] for t, _ in batch]]
            else:
                columns = [[t[0] for t, _ in batch], [t[1] for t, _ in batch]]
            features = [model.tokenize(c) for c in columns]
            labels = torch.tensor([s for _, s in batch], dtype=torch.float32)
            value = loss(features, labels)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses_seen.append(value.item())
            step_seconds.append(time.perf_counter() - began)
            if step % 20 == 0:
                print(f"  torch step {step}/{total} loss {value.item():.4f}", file=sys.stderr, flush=True)
    if output:
        model.save(str(output))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"steps": step, "final_loss": losses_seen[-1], "step_seconds_median": statistics.median(step_seconds),
            "peak_rss_mib": peak}


def run_torch(config, output, workdir):
    """Runs torch_train in a child process; returns its report."""
    config_path = Path(workdir) / f"torch-{abs(hash(json.dumps(config, sort_keys=True)))}.json"
    report_path = config_path.with_suffix(".report.json")
    config_path.write_text(json.dumps(config))
    cmd = [sys.executable, __file__, "--torch-worker", str(config_path), str(report_path)]
    if output:
        cmd.append(str(output))
    subprocess.run(cmd, check=True)
    return json.loads(report_path.read_text())


# ---------------------------------------------------------------- sembase side

def sembase(*args, capture=False):
    cmd = [str(SEMBASE), *map(str, args)]
    print("  $ " + " ".join(cmd), file=sys.stderr, flush=True)
    result = subprocess.run(cmd, check=True, text=True, capture_output=capture)
    return result.stdout


def model_dir(name):
    """The store directory of a model (pulled if missing)."""
    try:
        return Path(sembase("model", "pull", name, capture=True).strip().splitlines()[-1])
    except subprocess.CalledProcessError as failed:
        raise SystemExit(f"{name} is not in the store and could not be pulled: run "
                         f"`target/release/sembase model pull {name}` ({failed.stderr.strip()[-500:]})")


def sembase_train(config, output, workdir):
    """Runs `sembase train` with the recipe; returns its JSON report."""
    report = Path(workdir) / (Path(output).name + ".train.json")
    args = ["train", config["objective"], "--model", config["base"], "--data", config["data"], "--output", output,
            "--batch-size", config["batch"], "--lr", config["lr"], "--max-steps", config["steps"],
            "--max-length", config["max_length"], "--seed", config["seed"], "--threads", config["threads"],
            "--temperature", config["temperature"], "--warmup-ratio", config["warmup_ratio"],
            "--max-grad-norm", config["max_grad_norm"], "--json", report]
    if config["prefix"]:
        args += ["--prefix", config["prefix"]]
    if config["dims"]:
        args += ["--dims", ",".join(map(str, config["dims"]))]
    if config["project"]:
        args += ["--project", config["project"]]
    sembase(*args)
    return json.loads(report.read_text())


def evaluate(model, tasks, workdir, prefix=E5_PREFIX, threads=2):
    """`sembase eval` of one model at its full width: {task name: metrics}."""
    out = Path(workdir) / f"eval-{abs(hash((str(model), tuple(tasks))))}.json"
    args = ["eval", "--model", model, "--json", out, "--threads", threads, "--no-cache"]
    for task in tasks:
        args += ["--task", task]
    if prefix:
        args += ["--query-prefix", prefix]
    sembase(*args)
    results = json.loads(out.read_text())["results"]
    return {Path(r["task"].split(":", 1)[1]).parent.name + "/" + Path(r["task"]).stem: r["metrics"] for r in results}


def width_spearman(model, pairs_path, workdir, dims, prefix=E5_PREFIX, threads=2):
    """Spearman (x100) of cosine against the labels of a pairs file at each leading width.

    The texts are embedded once at full width by `sembase embed`; each width keeps the
    first N dimensions and re-normalises (Matryoshka), as `--dimensions N` does."""
    import numpy as np
    from scipy.stats import spearmanr

    rows = [line.rstrip("\n").split("\t") for line in open(pairs_path, encoding="utf-8").readlines()[1:]]
    texts = sorted({t for a, b, _ in rows for t in (a, b)})
    position = {t: i for i, t in enumerate(texts)}
    stem = f"widths-{abs(hash(str(model)))}"
    texts_file, vectors_file = Path(workdir) / f"{stem}.txt", Path(workdir) / f"{stem}.npy"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = ["embed", "--model", model, "--input", texts_file, "--output", vectors_file, "--threads", threads]
    if prefix:
        args += ["--prefix", prefix]
    sembase(*args)
    vectors = np.load(vectors_file)
    a = np.array([position[r[0]] for r in rows])
    b = np.array([position[r[1]] for r in rows])
    labels = np.array([float(r[2]) for r in rows])
    figures = {}
    for d in dims:
        x = vectors[:, :d] / np.linalg.norm(vectors[:, :d], axis=1, keepdims=True)
        figures[d] = 100.0 * spearmanr((x[a] * x[b]).sum(1), labels).correlation
    return figures


# ---------------------------------------------------------------- parts

def print_table(title, header, rows):
    print(f"\n### {title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def compare_training(title, base_dir, config, tasks, args, widths=True):
    """Trains with both trainers once per seed of `--seeds` and prints base / sembase /
    PyTorch figures side by side: every task at full width and, with `widths`, ATEC dev at
    each Matryoshka width; with several seeds, a row per seed and their mean, so a
    difference between the trainers can be read against the spread between seeds."""
    runs = []
    for seed in args.seeds:
        seeded = dict(config, seed=seed)
        ours_dir = Path(args.workdir) / f"{title}-s{seed}-sembase"
        theirs_dir = Path(args.workdir) / f"{title}-s{seed}-torch"
        runs.append({"seed": seed, "sembase": sembase_train(seeded, ours_dir, args.workdir),
                     "pytorch": run_torch(seeded, theirs_dir, args.workdir),
                     "dirs": {"sembase": ours_dir, "pytorch": theirs_dir}})
    base_scores = evaluate(base_dir, tasks, args.workdir, threads=args.threads)
    base_widths = width_spearman(base_dir, DATA / "zh/atec/dev.tsv", args.workdir, MATRYOSHKA_DIMS,
                                 threads=args.threads) if widths else {}
    for run in runs:
        run["scores"] = {n: evaluate(d, tasks, args.workdir, threads=args.threads) for n, d in run["dirs"].items()}
        run["widths"] = {n: width_spearman(d, DATA / "zh/atec/dev.tsv", args.workdir, MATRYOSHKA_DIMS,
                                           threads=args.threads)
                         for n, d in run["dirs"].items()} if widths else {}
    recipe_line = (f"{config['objective']}, {config['steps']} steps, batch {config['batch']}, lr {config['lr']}, "
                   f"length {config['max_length']}" + (f", --dims {config['dims']}" if config["dims"] else ""))

    def side_by_side(label, base, figure):
        """Rows of one figure (a task or a width): one per seed, then the mean over seeds."""
        pairs = [(figure(run, "sembase"), figure(run, "pytorch")) for run in runs]
        rows = [[label, run["seed"], f"{base:.2f}", f"{o:.2f}", f"{t:.2f}", f"{o - t:+.2f}"]
                for run, (o, t) in zip(runs, pairs)]
        if len(runs) > 1:
            o, t = (statistics.mean(p[i] for p in pairs) for i in (0, 1))
            spread = [f"{min(p[i] for p in pairs):.2f}..{max(p[i] for p in pairs):.2f}" for i in (0, 1)]
            rows.append([label, "mean", f"{base:.2f}", f"{o:.2f} ({spread[0]})", f"{t:.2f} ({spread[1]})", f"{o - t:+.2f}"])
        return rows

    header = ["task", "seed", "base", "sembase", "pytorch", "sembase - pytorch"]
    rows = [row for task in base_scores
            for row in side_by_side(task, base_scores[task]["spearman"], lambda r, n: r["scores"][n][task]["spearman"])]
    print_table(f"{title}: {recipe_line}: Spearman x100 by `sembase eval`", header, rows)
    if widths:
        rows = [row for d in MATRYOSHKA_DIMS for row in side_by_side(d, base_widths[d], lambda r, n: r["widths"][n][d])]
        print_table(f"{title}: ATEC dev Spearman x100 at each width (first N dims, re-normalised)",
                    ["dims"] + header[1:], rows)
    for run in runs:
        ours, theirs = run["sembase"], run["pytorch"]
        print(f"seed {run['seed']}: step time (median) sembase {ours['step_seconds_median']:.3f}s, pytorch "
              f"{theirs['step_seconds_median']:.3f}s ({ours['step_seconds_median'] / theirs['step_seconds_median']:.2f}x); "
              f"peak RSS sembase {ours['peak_rss_mib']:.0f} MiB, pytorch {theirs['peak_rss_mib']:.0f} MiB")
    return {"base": {"scores": base_scores, "widths": base_widths},
            "runs": [{k: v for k, v in run.items() if k != "dirs"} for run in runs]}


def part_supervised(args):
    base = model_dir(E5)
    config = recipe("sts", base, DATA / "zh/atec/train.tsv", args.steps, args.batch, 2e-5, 32, args.threads, prefix=E5_PREFIX)
    return compare_training("supervised", base, config, [f"pairs:{DATA}/zh/atec/dev.tsv", f"pairs:{DATA}/zh/lcqmc/test.tsv"], args)


def part_simcse(args):
    base = model_dir(E5)
    config = recipe("simcse", base, DATA / "zh/corpus/atec-questions.txt", args.steps, args.batch, 3e-5, 32, args.threads,
                    prefix=E5_PREFIX)
    return compare_training("simcse", base, config, [f"pairs:{DATA}/zh/atec/dev.tsv", f"pairs:{DATA}/zh/lcqmc/test.tsv"], args,
                            widths=False)


def part_matryoshka(args):
    base = model_dir(E5)
    config = recipe("sts", base, DATA / "zh/atec/train.tsv", args.steps, args.batch, 2e-5, 32, args.threads, prefix=E5_PREFIX,
                    dims=MATRYOSHKA_DIMS)
    return compare_training("matryoshka", base, config, [f"pairs:{DATA}/zh/atec/dev.tsv"], args)


def part_speed(args):
    base = model_dir(MINILM)
    config = recipe("simcse", base, DATA / "en/corpus/sentences.txt", args.speed_steps, 64, 3e-5, 32, args.threads)
    ours = sembase_train(config, Path(args.workdir) / "speed-sembase", args.workdir)
    theirs = run_torch(config, None, args.workdir)
    ratio = ours["step_seconds_median"] / theirs["step_seconds_median"]
    print_table(f"speed: {MINILM}, SimCSE, batch 64, length 32, {args.speed_steps} steps, {args.threads} threads",
                ["trainer", "median s/step", "peak RSS MiB"],
                [["sembase", f"{ours['step_seconds_median']:.3f}", f"{ours['peak_rss_mib']:.0f}"],
                 ["pytorch", f"{theirs['step_seconds_median']:.3f}", f"{theirs['peak_rss_mib']:.0f}"]])
    print(f"sembase step time / PyTorch step time = {ratio:.2f}x (goal <= 1.0x)")
    return {"sembase": ours, "pytorch": theirs, "ratio": ratio}


def part_export(args):
    """A sembase-trained model with a projection, loaded by sentence-transformers."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    base = model_dir(MINILM)
    output = Path(args.workdir) / "export-sembase"
    config = recipe("simcse", base, DATA / "en/corpus/sentences.txt", 5, 16, 3e-5, 32, args.threads, project=128)
    sembase_train(config, output, args.workdir)
    with open(DATA / "en/corpus/sentences.txt", encoding="utf-8") as f:
        texts = [next(f).strip() for _ in range(64)]
    texts_file = Path(args.workdir) / "export-texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ours_path = Path(args.workdir) / "export-ours.npy"
    sembase("embed", "--model", output, "--input", texts_file, "--output", ours_path)
    ours = np.load(ours_path)
    theirs = SentenceTransformer(str(output), device="cpu").encode(texts, convert_to_numpy=True)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    print(f"\n### export: {output} (projection to 128) loaded by sentence-transformers: "
          f"width {theirs.shape[1]}, lowest cosine to `sembase embed` over {len(texts)} sentences {cos.min():.7f}")
    if theirs.shape[1] != 128 or cos.min() < 0.9999:
        raise SystemExit("export check FAILED")
    return {"width": int(theirs.shape[1]), "min_cosine": float(cos.min())}


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--torch-worker":
        config = json.loads(Path(sys.argv[2]).read_text())
        output = sys.argv[4] if len(sys.argv) > 4 else None
        Path(sys.argv[3]).write_text(json.dumps(torch_train(config, output)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(ALL_PARTS), help="comma-separated: " + ",".join(ALL_PARTS))
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of the quality runs")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the quality runs")
    parser.add_argument("--speed-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="42", help="comma-separated seeds; the quality parts train once per seed")
    parser.add_argument("--workdir", default=None, help="where models and reports go (default: a temporary dir)")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    if not SEMBASE.exists():
        raise SystemExit(f"{SEMBASE} is missing: run `cargo build --release` first")
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="sembase-train-bench-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    parts = {"supervised": part_supervised, "simcse": part_simcse, "matryoshka": part_matryoshka,
             "speed": part_speed, "export": part_export}
    figures = {}
    for name in args.parts.split(","):
        if name not in parts:
            raise SystemExit(f"unknown part {name!r}; choose from {', '.join(ALL_PARTS)}")
        began = time.time()
        figures[name] = parts[name](args)
        print(f"({name} took {time.time() - began:.0f}s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
