#!/usr/bin/env python3
"""Builds crates/sembase-eval/tests/fixtures/metrics.json: synthetic inputs (with
ties, graded qrels) and the reference values of every sembase-eval metric,
computed by independent implementations:

- Spearman / Pearson: scipy.stats.spearmanr / pearsonr
- pairs: sentence-transformers' BinaryClassificationEvaluator
  (find_best_acc_and_threshold, find_best_f1_and_threshold) and
  sklearn.metrics.average_precision_score
- retrieval: pytrec_eval (recall_k, recip_rank, ndcg_cut_10, map_cut_100) over
  the full run, and sentence-transformers' InformationRetrievalEvaluator
  .compute_metrics on a tie-free case

Run with a Python that has numpy, scipy, scikit-learn, pytrec_eval
(pytrec-eval-terrier) and sentence-transformers, from the repository root:

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python tools/make_eval_fixture.py

All numbers are multiples of 1/1024 so that JSON round-trips them exactly.
"""

import json
import os
import sys

import numpy as np
import pytrec_eval
import scipy
import scipy.stats
import sentence_transformers
import sklearn
from sentence_transformers.sentence_transformer.evaluation import (
    BinaryClassificationEvaluator,
    InformationRetrievalEvaluator,
)
from sklearn.metrics import average_precision_score

SEED = 20240604
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "sembase-eval", "tests", "fixtures", "metrics.json")
rng = np.random.default_rng(SEED)


def grid(values):
    """Python floats on the 1/1024 grid."""
    return [float(v) / 1024.0 for v in values]


def correlation_cases():
    cases = []
    n = 500
    # Continuous scores against graded gold with many ties (STS-like, step 0.2).
    gold_steps = rng.integers(0, 26, n)  # 0.0, 0.2, ..., 5.0
    y = [float(v) for v in np.round(gold_steps * 0.2, 1)]
    x = grid(np.clip(gold_steps * 60 - 700 + rng.integers(-500, 500, n), -1024, 1024))
    cases.append(("continuous_vs_tied_gold", x, y))
    # Both sides heavily tied (coarse grid).
    x = grid(rng.integers(-8, 9, n) * 128)
    y = grid(rng.integers(0, 6, n) * 256)
    cases.append(("both_tied", x, y))
    # Correlated, with 0/1 labels (pairs' Spearman).
    labels = rng.integers(0, 2, n)
    x = grid(np.clip(labels * 300 + rng.integers(-600, 600, n), -1024, 1024))
    cases.append(("against_binary_labels", x, [float(v) for v in labels]))
    out = []
    for name, x, y in cases:
        out.append({
            "name": name,
            "x": x,
            "y": y,
            "spearman": float(scipy.stats.spearmanr(x, y).statistic),
            "pearson": float(scipy.stats.pearsonr(x, y).statistic),
        })
    return out


def pair_cases():
    cases = []
    n = 300
    labels = rng.integers(0, 2, n)
    # Ties: a coarse grid, positives shifted up.
    scores = grid(np.clip(rng.integers(-6, 7, n) * 96 + labels * 160, -1024, 1024))
    cases.append(("tied", scores, labels))
    # Distinct scores.
    base = rng.choice(np.arange(-1024, 1025), size=n, replace=False)
    labels = (rng.random(n) < 1 / (1 + np.exp(-base / 300.0))).astype(int)
    cases.append(("distinct", grid(base), labels))
    # Small, mostly one score.
    scores = grid([512, 512, 512, 256, 512, -128, 512, 256])
    cases.append(("small", scores, np.array([1, 0, 1, 1, 0, 0, 1, 0])))
    out = []
    for name, scores, labels in cases:
        labels = [int(v) for v in labels]
        acc, acc_t = BinaryClassificationEvaluator.find_best_acc_and_threshold(scores, labels, True)
        f1, precision, recall, f1_t = BinaryClassificationEvaluator.find_best_f1_and_threshold(scores, labels, True)
        ap = average_precision_score(labels, scores)
        out.append({
            "name": name,
            "scores": scores,
            "labels": labels,
            "accuracy": float(acc),
            "accuracy_threshold": float(acc_t),
            "f1": float(f1),
            "precision": float(precision),
            "recall": float(recall),
            "f1_threshold": float(f1_t),
            "ap": float(ap),
            "spearman": float(scipy.stats.spearmanr(scores, labels).statistic),
        })
    return out


MEASURES = {"recall_1", "recall_5", "recall_10", "recall_100", "recip_rank", "ndcg_cut_10", "map_cut_100"}


def pytrec_reference(qrels, run):
    per_query = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)
    out = {}
    for qid, m in per_query.items():
        rr = m["recip_rank"]
        out[qid] = {
            "recall@1": m["recall_1"],
            "recall@5": m["recall_5"],
            "recall@10": m["recall_10"],
            "recall@100": m["recall_100"],
            # MRR@10: the reciprocal rank when the first relevant document is in the top 10.
            "mrr@10": rr if rr >= 0.1 - 1e-12 else 0.0,
            "ndcg@10": m["ndcg_cut_10"],
            "map@100": m["map_cut_100"],
        }
    return out


def mean(per_query):
    names = next(iter(per_query.values())).keys()
    return {n: float(np.mean([q[n] for q in per_query.values()])) for n in names}


def retrieval_graded_ties():
    """Coarse scores (many ties across relevant and irrelevant documents), graded
    qrels, judged-irrelevant documents, a query with no relevant document, a query
    with more than 100 relevant documents and qrels naming documents that are not
    in the corpus. Ids are chosen so that byte order differs from number order."""
    n_docs, n_queries = 150, 14
    doc_ids = [f"d{(i * 37) % 1000}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    scores = (rng.integers(-6, 7, (n_queries, n_docs)) * 128).tolist()
    qrels = {}
    for qi, qid in enumerate(query_ids):
        judged = {}
        if qi == 0:
            for d in rng.choice(n_docs, 120, replace=False):
                judged[doc_ids[d]] = int(rng.integers(1, 4))
        elif qi == 1:
            for d in rng.choice(n_docs, 5, replace=False):
                judged[doc_ids[d]] = 0
        else:
            for d in rng.choice(n_docs, int(rng.integers(1, 12)), replace=False):
                judged[doc_ids[d]] = int(rng.integers(0, 4))
                # Relevant documents lean to higher scores.
                if judged[doc_ids[d]] > 0:
                    scores[qi][d] = min(1024, scores[qi][d] + 256)
            if qi % 4 == 0:
                judged[f"missing{qi}"] = 2
        qrels[qid] = judged
    score_grid = [grid(row) for row in scores]
    run = {qid: {doc_ids[d]: score_grid[qi][d] for d in range(n_docs)} for qi, qid in enumerate(query_ids)}
    per_query = pytrec_reference(qrels, run)
    return {
        "name": "graded_ties",
        "reference": f"pytrec_eval {getattr(pytrec_eval, '__version__', '')}".strip(),
        "doc_ids": doc_ids,
        "query_ids": query_ids,
        "scores": score_grid,
        "qrels": qrels,
        "per_query": per_query,
        "mean": mean(per_query),
    }


def retrieval_binary_distinct():
    """Distinct scores and binary qrels: pytrec_eval and sentence-transformers'
    InformationRetrievalEvaluator agree on every measure here; both are checked."""
    n_docs, n_queries = 130, 12
    doc_ids = [f"doc-{i}" for i in range(n_docs)]
    query_ids = [f"query-{i}" for i in range(n_queries)]
    scores = []
    qrels = {}
    for qid in query_ids:
        rel = rng.choice(n_docs, int(rng.integers(1, 30)), replace=False)
        qrels[qid] = {doc_ids[d]: 1 for d in rel}
        # Distinct values, handed out by a noisy key that favours relevant documents.
        key = rng.normal(size=n_docs)
        key[rel] += 1.0
        values = np.sort(rng.choice(np.arange(-1024, 1025), size=n_docs, replace=False))[::-1]
        row = np.empty(n_docs, dtype=int)
        row[np.argsort(-key)] = values
        scores.append(row.tolist())
    score_grid = [[v / 1024.0 for v in row] for row in scores]
    run = {qid: {doc_ids[d]: score_grid[qi][d] for d in range(n_docs)} for qi, qid in enumerate(query_ids)}
    per_query = pytrec_reference(qrels, run)

    evaluator = InformationRetrievalEvaluator(
        queries={q: q for q in query_ids},
        corpus={d: d for d in doc_ids},
        relevant_docs={q: set(docs) for q, docs in qrels.items()},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 5, 10, 100],
        map_at_k=[100],
    )
    results = []
    for qi, qid in enumerate(evaluator.queries_ids):
        row = score_grid[query_ids.index(qid)]
        hits = sorted(({"corpus_id": doc_ids[d], "score": row[d]} for d in range(n_docs)), key=lambda h: -h["score"])[:100]
        results.append(hits)
    st = evaluator.compute_metrics(results)
    st_mean = {
        "recall@1": float(st["recall@k"][1]),
        "recall@5": float(st["recall@k"][5]),
        "recall@10": float(st["recall@k"][10]),
        "recall@100": float(st["recall@k"][100]),
        "mrr@10": float(st["mrr@k"][10]),
        "ndcg@10": float(st["ndcg@k"][10]),
        "map@100": float(st["map@k"][100]),
    }
    pt_mean = mean(per_query)
    for name, value in st_mean.items():
        assert abs(value - pt_mean[name]) < 1e-9, (name, value, pt_mean[name])
    return {
        "name": "binary_distinct",
        "reference": "pytrec_eval and sentence-transformers InformationRetrievalEvaluator",
        "doc_ids": doc_ids,
        "query_ids": query_ids,
        "scores": score_grid,
        "qrels": qrels,
        "per_query": per_query,
        "mean": pt_mean,
        "sentence_transformers_mean": st_mean,
    }


def main():
    fixture = {
        "generator": "tools/make_eval_fixture.py",
        "seed": SEED,
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            "sentence-transformers": sentence_transformers.__version__,
        },
        "correlation": correlation_cases(),
        "pairs": pair_cases(),
        "retrieval": [retrieval_graded_ties(), retrieval_binary_distinct()],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    os.replace(tmp, OUT)
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
