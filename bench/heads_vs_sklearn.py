#!/usr/bin/env python3
"""Task heads, side by side: `sembase head train` against scikit-learn's
LogisticRegression on sentence-transformers embeddings, on the SAME folds.

For each classify set, in one run:
  1. `sembase head train --json` (10-fold CV, L2 strength C chosen over a grid by
     that CV); its JSON carries the fold id of every row ("fold_ids") and the grid.
  2. sentence-transformers embeds the same texts (same prefix) and scikit-learn's
     LogisticRegression (lbfgs, multinomial, same class weights) is cross-validated
     on exactly those folds for every C of the same grid; the best C is kept, as
     sembase does.
  3. prints both accuracies and the difference (goal: within +/-0.5 points), and
     sembase's training time on cached embeddings (a second `head train` run)
     beside scikit-learn's time for the same cross validation.

Chinese: multilingual-e5-small on zh/classify/review-sentiment.tsv (--zh or --only-zh).
e5 was trained with "query: " / "passage: " prefixes and its authors advise "query: "
for embeddings used as features (linear probes, clustering); both sides get the same
prefix, "query: " unless --zh-prefix says otherwise ('' for none).

Usage (models in the store, $SEMBASE_HOME/models, default ~/.cache/sembase/models:
`target/release/sembase model pull NAME`; data from ../shared/data beside the repository):
  make bench-env    # once: .venv-bench with bench/requirements.txt
  nice .venv-bench/bin/python bench/heads_vs_sklearn.py [--sets mr,cr,...] [--zh]
  nice .venv-bench/bin/python bench/heads_vs_sklearn.py --only-zh [--zh-prefix '']
  nice .venv-bench/bin/python bench/heads_vs_sklearn.py --st-only   # precompute reference embeddings
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
# The model store, as sembase finds it: $SEMBASE_HOME, else ~/.cache/sembase.
HOME = Path(os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase")
EN_SETS = ["cr", "trec", "mr", "mpqa", "subj", "sst2"]


def read_tsv(path):
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        next(f)
        for line in f:
            line = line.rstrip("\n").rstrip("\r")
            text, label = line.split("\t")
            texts.append(text)
            labels.append(label)
    return texts, labels


def tag(model, path, prefix):
    """File-name stem for one (model, set, prefix) job."""
    return f"{model}-{path.stem}" + (f"-{prefix.strip().rstrip(':')}" if prefix else "")


def st_embeddings(model, path, prefix, work):
    """sentence-transformers vectors for the set, cached as .npy under `work`."""
    cache = work / f"st-{tag(model, path, prefix)}.npy"
    if cache.exists():
        return np.load(cache)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(HOME / "models" / model), device="cpu")
    texts, _ = read_tsv(path)
    t0 = time.time()
    vecs = st.encode([prefix + t for t in texts], batch_size=64, convert_to_numpy=True)
    print(f"  [st] {model} {path.stem}: {len(texts)} texts in {time.time() - t0:.0f}s", flush=True)
    np.save(cache, vecs.astype(np.float32))
    return vecs


def sembase_train(binary, model, path, prefix, work, folds, seed):
    out = work / f"head-{tag(model, path, prefix)}"
    js = work / f"sembase-{tag(model, path, prefix)}.json"
    cmd = [str(binary), "head", "train", "--model", model, "--data", str(path), "--output", str(out),
           "--folds", str(folds), "--seed", str(seed), "--json", str(js)]
    if prefix:
        cmd += ["--prefix", prefix]
    runs = []
    for _ in range(2):  # the second run reads every embedding from the cache
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.time() - t0)
    with open(js) as f:
        report = json.load(f)
    return report, runs


def sklearn_cv(x, labels, fold_ids, grid, class_weight):
    from sklearn.linear_model import LogisticRegression

    y = np.array(labels)
    fold_ids = np.array(fold_ids)
    t0 = time.time()
    best = None
    for c in grid:
        correct = 0
        for k in np.unique(fold_ids):
            train, test = fold_ids != k, fold_ids == k
            clf = LogisticRegression(C=c, class_weight=class_weight, max_iter=2000)
            clf.fit(x[train], y[train])
            correct += int((clf.predict(x[test]) == y[test]).sum())
        acc = 100.0 * correct / len(y)
        if best is None or acc > best[1]:
            best = (c, acc)
    return best[0], best[1], time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(EN_SETS))
    ap.add_argument("--zh", action="store_true", help="also multilingual-e5-small on zh review-sentiment")
    ap.add_argument("--only-zh", action="store_true")
    ap.add_argument("--zh-prefix", default="query: ", help="prefix for e5 on both sides ('' for none)")
    ap.add_argument("--st-only", action="store_true", help="only compute the reference embeddings")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "sembase"))
    ap.add_argument("--work", default="/tmp/heads-bench")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    jobs = []
    if not args.only_zh:
        jobs += [("all-minilm-l6-v2", DATA / "en" / "classify" / f"{s}.tsv", "") for s in args.sets.split(",") if s]
    if args.zh or args.only_zh:
        jobs.append(("multilingual-e5-small", DATA / "zh" / "classify" / "review-sentiment.tsv", args.zh_prefix))

    for model in sorted({model for model, _, _ in jobs}):
        if not (HOME / "models" / model / "model.safetensors").exists():
            sys.exit(f"no model.safetensors in {HOME / 'models' / model}: "
                     f"run `target/release/sembase model pull {model}`")
    if not args.st_only and not Path(args.binary).exists():
        sys.exit(f"{args.binary} not found (cargo build --release)")

    rows = []
    for model, path, prefix in jobs:
        print(f"== {model} {path.stem}", flush=True)
        x = st_embeddings(model, path, prefix, work)
        if args.st_only:
            continue
        report, runs = sembase_train(args.binary, model, path, prefix, work, args.folds, args.seed)
        _, labels = read_tsv(path)
        grid = report["grid"]
        class_weight = "balanced" if report.get("class_weight") == "balanced" else None
        c, ref, sk_s = sklearn_cv(x, labels, report["fold_ids"], grid, class_weight)
        ours = report["metrics"]["accuracy"]
        row = dict(set=f"{path.parent.parent.name}/{path.stem}", model=model, prefix=prefix, n=len(labels), sembase=ours,
                   sembase_c=report.get("c"), sklearn=ref, sklearn_c=c, diff=ours - ref,
                   macro_f1=report["metrics"]["macro_f1"], first_run_s=runs[0], cached_run_s=runs[1],
                   train_s=report.get("train_seconds"), sklearn_cv_s=sk_s, grid=grid)
        rows.append(row)
        print(f"  sembase {ours:.2f} (C={row['sembase_c']})  sklearn {ref:.2f} (C={c})  diff {ours - ref:+.2f}"
              f"  | run {runs[0]:.1f}s, cached {runs[1]:.1f}s (training {row['train_s']:.2f}s;"
              f" sklearn CV {sk_s:.1f}s)", flush=True)

    if rows:
        print()
        print(f"{'set':<26}{'prefix':>8}{'rows':>7}{'sembase':>9}{'sklearn':>9}{'diff':>7}{'cached run s':>14}"
              f"{'train s':>9}{'sklearn CV s':>14}{'sklearn/ours':>13}")
        for r in rows:
            print(f"{r['set']:<26}{r['prefix'].strip() or '-':>8}{r['n']:>7}{r['sembase']:>9.2f}{r['sklearn']:>9.2f}"
                  f"{r['diff']:>+7.2f}{r['cached_run_s']:>14.1f}{r['train_s']:>9.2f}{r['sklearn_cv_s']:>14.1f}"
                  f"{r['sklearn_cv_s'] / r['train_s']:>12.1f}x")
        print()
        for r in rows:
            if r["n"] >= 10000:
                print(f"training a head on {r['n']} texts ({r['set']}) with cached embeddings: {r['train_s']:.1f}s"
                      f" ({args.folds}-fold CV over {len(r['grid'])} C values + final fit; whole cached"
                      f" `sembase head train` run {r['cached_run_s']:.1f}s; scikit-learn's CV alone"
                      f" {r['sklearn_cv_s']:.1f}s)")
        with open(work / "summary.json", "w") as f:
            json.dump(rows, f, indent=1)
        if any(abs(r["diff"]) > 0.5 for r in rows):
            print("some sets differ by more than 0.5 points", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
