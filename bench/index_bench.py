#!/usr/bin/env python3
"""Index stores side by side: build time, bytes per vector, QPS and recall@10
against exact search, on 100k+ real English sentences, plus recall@10 on
zh/retrieval/lcqmc through each store.

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python bench/index_bench.py [--sembase BIN] [--data DIR] [--cache DIR]
                         [--postgres URL] [--queries 1000] [--single-queries 200]
                         [--ef 64 128 256] [--skip-zh] [--reuse-indexes] [--json OUT]
                         [--stores NAME ...] [--queue-workers 1 2 3 --queue-docs 6000]

(This script uses only the standard library: any python3 runs it too.) Models come from the
store, $SEMBASE_HOME (default ~/.cache/sembase: `target/release/sembase model pull NAME`), the
data from ../shared/data beside the repository (--data), the binary from target/release.

What it does, in one run:
1. Corpus: en/corpus/sentences.txt plus the text of en/classify, SST-2, SNLI
   triplets, SICK-R train, STS-B train, MRPC train, STS12 and STS14 (whitespace
   normalised, deduplicated, in that order); queries: STS-B test sentence1 texts
   not in the corpus (the first --queries of them).
2. Embeds both once with all-minilm-l6-v2 (`sembase embed ... .npy`) into --cache
   (default $SEMBASE_HOME/cache/index-bench); later runs reuse the files.
3. For each store (flat f32, flat f16, flat int8, ann, and with --postgres URL
   pgvector at f32 (`vector`), f16 (`halfvec`) and bit (`binary_quantize`,
   re-ranked on the full vectors): the `postgres` hook; --stores picks some,
   flat-f32 always runs as the reference) builds an index from the cached
   vectors (`sembase index build --vectors`), and searches every query vector
   (`sembase search --query-vectors`, top 10). Prints build seconds, bytes per
   vector (the index directory plus, for pgvector, the table with every index;
   also the table's rows and the HNSW index alone), queries/s of the search
   itself (model time excluded) with all queries in one call and with one query
   per call (the first --single-queries), recall@10 against flat f32 (exact) and
   both QPS ratios against flat f32. ann and pgvector are searched at each --ef
   (for bit, the candidates re-ranked: at least 10 per hit).
3b. With --postgres and --queue-workers: a queued build (`index build --queue`)
   of the first --queue-docs corpus sentences, embedded by 1, 2, 3... `index
   work` processes started together (each with cores/workers threads, at least
   one), timed from queueing to the last worker's exit (model loading and the
   HNSW build included), with the rate of the embedding phase from `index
   status` and the rate per worker; then the projected time for 10M and 100M
   documents at the one-worker rate, and the storage per pgvector precision.
4. zh/retrieval/lcqmc with multilingual-e5-small: corpus and queries embedded
   once (`passage: ` / `query: ` prefixes, cached), one index per store, every
   query searched; prints recall@10 against the qrels per store.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-minilm-l6-v2"
ZH_MODEL = "multilingual-e5-small"
# (file under en/, text columns) added after en/corpus/sentences.txt.
EXTRA_TEXT = [
    ("classify/subj.tsv", [0]), ("classify/mr.tsv", [0]), ("classify/mpqa.tsv", [0]),
    ("classify/cr.tsv", [0]), ("classify/trec.tsv", [0]), ("classify/sst2.tsv", [0]),
    ("snli-triplets/train.tsv", [0, 1, 2]), ("sickr/train.tsv", [0, 1]), ("stsb/train.tsv", [0, 1]),
    ("mrpc/train.tsv", [0, 1]), ("sts12/test.tsv", [0, 1]), ("sts14/test.tsv", [0, 1]),
]


def tsv_texts(path, columns):
    """The given columns of a headed TSV file, row by row."""
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        for row in rows:
            for c in columns:
                yield row[c]


def squash(text):
    return " ".join(text.split())


def make_texts(data, cache, n_queries):
    """Writes corpus.txt and queries.txt into the cache (once)."""
    corpus_file, query_file = cache / "corpus.txt", cache / "queries.txt"
    if corpus_file.exists() and query_file.exists():
        return corpus_file, query_file
    seen, corpus = set(), []
    sources = [(line for line in open(data / "en/corpus/sentences.txt", encoding="utf-8"))]
    sources += [tsv_texts(data / "en" / path, cols) for path, cols in EXTRA_TEXT]
    for source in sources:
        for text in source:
            text = squash(text)
            if text and text not in seen:
                seen.add(text)
                corpus.append(text)
    queries = []
    for text in tsv_texts(data / "en/stsb/test.tsv", [0]):
        text = squash(text)
        if text not in seen and text not in queries:
            queries.append(text)
    write_lines(corpus_file, corpus)
    write_lines(query_file, queries[:n_queries])
    return corpus_file, query_file


def write_lines(path, lines):
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    os.replace(tmp, path)


def embed_once(sembase, text_file):
    """`sembase embed` of a text file into a .npy beside it, unless it is there."""
    out = text_file.with_suffix(".npy")
    if not out.exists():
        tmp = text_file.with_suffix(".tmp.npy")
        start = time.time()
        run([sembase, "embed", "--model", MODEL, "--input", str(text_file), "--output", str(tmp)])
        os.replace(tmp, out)
        print(f"embedded {text_file.name} in {time.time() - start:.0f}s", file=sys.stderr)
    return out


def run(cmd, **kw):
    print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def npy_rows(path, rows, out):
    """Copies the first `rows` rows of a 2-D float32 .npy file into `out`."""
    data = path.read_bytes()
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10:10 + header_len].decode("latin1")
    shape = header.split("'shape': (")[1].split(")")[0]
    n, dim = (int(x) for x in shape.split(",")[:2])
    rows = min(rows, n)
    new_header = header.replace(f"({n}, {dim})", f"({rows}, {dim})")
    new_header = new_header.rstrip("\n").rstrip() + " "
    while (10 + len(new_header) + 1) % 64:
        new_header += " "
    new_header += "\n"
    body = data[10 + header_len:10 + header_len + rows * dim * 4]
    out.write_bytes(b"\x93NUMPY\x01\x00" + len(new_header).to_bytes(2, "little") + new_header.encode("latin1") + body)
    return out


def build(sembase, out_dir, name, corpus, vectors, model, store, extra=(), reuse=False):
    """`sembase index build` from cached vectors; returns (dir, its --json report).
    With `reuse`, an index of an earlier run (and its build report) is kept."""
    index = out_dir / name
    report = out_dir / f"{name}.build.json"
    if reuse and index.exists() and report.exists():
        return index, json.loads(report.read_text())
    drop(sembase, index)
    run([sembase, "index", "build", "--model", model, "--corpus", corpus, "--vectors", vectors,
         "--output", index, "--store", store, "--json", report, *extra])
    return index, json.loads(report.read_text())


def drop(sembase, index):
    """Removes an index of an earlier run: its directory, and its table when in PostgreSQL."""
    if (index / "index.json").exists():
        run([sembase, "index", "drop", "--index", index])
    shutil.rmtree(index, ignore_errors=True)


def queue_scaling(args, out_dir, en_rows):
    """Queued builds of the first --queue-docs sentences by 1, 2, 3... workers,
    then projections to 10M and 100M documents."""
    corpus, _ = make_texts(Path(args.data), args.cache_dir, args.queries)
    docs = out_dir / "queue_corpus.txt"
    with open(corpus, encoding="utf-8") as f:
        write_lines(docs, [line.rstrip("\n") for _, line in zip(range(args.queue_docs), f)])
    cores = os.cpu_count()
    rows = []
    for workers in args.queue_workers:
        index = out_dir / f"queue-{workers}"
        drop(args.sembase, index)
        threads = max(1, cores // workers)
        start = time.time()
        run([args.sembase, "index", "build", "--queue", "--chunk-size", args.chunk_size, "--model", MODEL,
             "--corpus", docs, "--output", index, "--store", args.postgres, "--table", f"sembase_bench_queue_{workers}"])
        procs = [subprocess.Popen([args.sembase, "index", "work", "--index", index, "--threads", str(threads)],
                                  stderr=subprocess.DEVNULL) for _ in range(workers)]
        if any(p.wait() != 0 for p in procs):
            sys.exit(f"a worker of the {workers}-worker build failed")
        wall = time.time() - start
        status = json.loads(subprocess.run([args.sembase, "index", "status", "--index", index, "--json"],
                                           check=True, capture_output=True, text=True).stdout)
        rate = status["rows_per_second"]
        rows.append({"workers": workers, "threads_each": threads, "documents": status["rows"],
                     "wall_seconds": round(wall, 1), "rows_per_second_wall": round(status["rows"] / wall, 1),
                     "rows_per_second_embedding": round(rate, 1),
                     "rows_per_second_per_worker": round(rate / workers, 1)})
        print(json.dumps(rows[-1]), flush=True)
        drop(args.sembase, index)
    projections = []
    if rows:
        one = rows[0]["rows_per_second_embedding"]
        for n in (10_000_000, 100_000_000):
            p = {"documents": n, "days_one_machine": round(n / one / 86400, 1),
                 "hours_ten_machines": round(n / one / 10 / 3600, 1)}
            for r in en_rows:
                if r["store"].startswith("pgvector") and "table_bytes_per_vector" in r:
                    name = r["store"].split(" ")[0]
                    p[f"{name}_gb"] = round(n * r["bytes_per_vector"] / 1e9, 1)
                    p[f"{name}_hnsw_gb"] = round(n * r["vector_index_bytes_per_vector"] / 1e9, 1)
            projections.append(p)
            print(json.dumps(p), flush=True)
    return rows, projections


def search(sembase, index, query_vectors, out, extra=()):
    """`sembase search --query-vectors`; returns (hit ids per query, search seconds)."""
    run([sembase, "search", "--index", index, "--query-vectors", query_vectors, "--top-k", "10", "--json", out, *extra])
    result = json.loads(out.read_text())
    return [[h["id"] for h in r["hits"]] for r in result["results"]], result["search_seconds"]


def overlap(got, want):
    """Mean fraction of each reference top-10 found in the same query's top-10."""
    return sum(len(set(g) & set(w)) / max(len(w), 1) for g, w in zip(got, want)) / max(len(want), 1)


def english(args, cache, out_dir):
    corpus, queries = make_texts(Path(args.data), cache, args.queries)
    corpus_npy, query_npy = embed_once(args.sembase, corpus), embed_once(args.sembase, queries)
    one_by_one = npy_rows(query_npy, args.single_queries, out_dir / "queries_single.npy")
    n_docs = sum(1 for _ in open(corpus, encoding="utf-8"))
    stores = [("flat-f32", "flat", ["--precision", "f32"]), ("flat-f16", "flat", ["--precision", "f16"]),
              ("flat-int8", "flat", ["--precision", "int8"]), ("ann-f32", "ann", ["--precision", "f32"])]
    if args.postgres:  # the `postgres` hook: pgvector HNSW (cosine) in a real PostgreSQL server
        stores += [("pgvector", args.postgres, ["--table", "sembase_bench_en"]),
                   ("pgvector-f16", args.postgres, ["--table", "sembase_bench_en_f16", "--precision", "f16"]),
                   ("pgvector-bit", args.postgres, ["--table", "sembase_bench_en_bit", "--precision", "bit"])]
    if args.stores:
        stores = [s for s in stores if s[0] == "flat-f32" or s[0] in args.stores]
    rows, exact, flat_qps = [], None, {}
    for name, store, extra in stores:
        index, report = build(args.sembase, out_dir, name, corpus, corpus_npy, MODEL, store, extra, args.reuse_indexes)
        efs = args.ef if store != "flat" else [None]
        for ef in efs:
            tune = ["--expansion-search", str(ef)] if ef else []
            label = f"{name} ef={ef}" if ef else name
            ids, seconds = search(args.sembase, index, query_npy, out_dir / f"{name}-{ef}.json", tune)
            _, single_seconds = search(args.sembase, index, one_by_one, out_dir / f"{name}-{ef}-single.json", tune + ["--batch", "1"])
            if exact is None:
                exact = ids
            qps = len(ids) / seconds
            single_qps = args.single_queries / single_seconds
            if name == "flat-f32":
                flat_qps = {"batch": qps, "single": single_qps}
            rows.append({
                "store": label, "documents": n_docs, "build_seconds": round(report["seconds"], 2),
                "bytes_per_vector": round(report["bytes"] / n_docs, 1), "qps_batch": round(qps, 1),
                "qps_one_at_a_time": round(single_qps, 1), "recall@10_vs_exact": round(overlap(ids, exact), 4),
                "qps_batch_vs_flat": round(qps / flat_qps["batch"], 2),
                "qps_one_at_a_time_vs_flat": round(single_qps / flat_qps["single"], 2),
            })
            for part in ("table_bytes", "vector_index_bytes"):
                if part in report:
                    rows[-1][part.replace("_bytes", "_bytes_per_vector")] = round(report[part] / n_docs, 1)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def chinese(args, cache, out_dir):
    data = Path(args.data) / "zh/retrieval/lcqmc"
    docs = [json.loads(l) for l in open(data / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(l) for l in open(data / "queries.jsonl", encoding="utf-8")]
    qrels = {}
    for line in list(open(data / "qrels/test.tsv", encoding="utf-8"))[1:]:
        qid, did, score = line.rstrip("\n").split("\t")
        if float(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    vectors = {}
    for name, items, prefix in [("zh_corpus", docs, "passage: "), ("zh_queries", queries, "query: ")]:
        npy = cache / f"{name}.npy"
        if not npy.exists():
            jsonl = cache / f"{name}.jsonl"
            # What the index embeds: title + " " + text when there is a title.
            texts = [(d.get("title") + " " + d["text"]) if d.get("title") else d["text"] for d in items]
            write_lines(jsonl, [json.dumps({"text": t}, ensure_ascii=False) for t in texts])
            tmp = cache / f"{name}.tmp.npy"
            run([args.sembase, "embed", "--model", ZH_MODEL, "--input", jsonl, "--prefix", prefix, "--output", tmp])
            os.replace(tmp, npy)
        vectors[name] = npy
    stores = [("flat", "flat", []), ("ann", "ann", [])]
    if args.postgres:  # the `postgres` hook
        stores.append(("pgvector", args.postgres, ["--table", "sembase_bench_lcqmc"]))
    rows = []
    for name, store, extra in stores:
        index, report = build(args.sembase, out_dir, f"zh-{name}", data / "corpus.jsonl", vectors["zh_corpus"], ZH_MODEL, store,
                              extra + ["--query-prefix", "query: ", "--document-prefix", "passage: "], args.reuse_indexes)
        ids, seconds = search(args.sembase, index, vectors["zh_queries"], out_dir / f"zh-{name}.json")
        judged = [(q["_id"], hits) for q, hits in zip(queries, ids) if q["_id"] in qrels]
        recall = sum(len(set(h) & qrels[q]) / len(qrels[q]) for q, h in judged) / len(judged)
        rows.append({"store": name, "documents": len(docs), "queries": len(judged), "recall@10": round(100 * recall, 2),
                     "build_seconds": round(report["seconds"], 2), "qps_batch": round(len(ids) / seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sembase", default=str(ROOT / "target/release/sembase"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single-queries", type=int, default=200, help="queries searched one at a time per store")
    ap.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256], help="ann/pgvector search candidates to sweep")
    ap.add_argument("--postgres", default=None, help="postgres://... URL: adds the pgvector store")
    ap.add_argument("--skip-zh", action="store_true")
    ap.add_argument("--reuse-indexes", action="store_true",
                    help="keep indexes (and their build times) from an earlier run; only search again")
    ap.add_argument("--json", default=None)
    ap.add_argument("--stores", nargs="+", default=None,
                    help="only these stores (flat-f32 always runs: it is the reference), e.g. pgvector pgvector-f16 pgvector-bit")
    ap.add_argument("--queue-workers", type=int, nargs="+", default=[],
                    help="with --postgres: time queued builds with these numbers of `index work` processes")
    ap.add_argument("--queue-docs", type=int, default=6000, help="sentences in each queued build")
    ap.add_argument("--chunk-size", type=int, default=500, help="chunk size of the queued builds")
    args = ap.parse_args()
    if args.queue_workers and not args.postgres:
        sys.exit("--queue-workers needs --postgres URL")
    # The model store, as sembase finds it: $SEMBASE_HOME, else ~/.cache/sembase.
    home = os.environ.get("SEMBASE_HOME") or os.path.expanduser("~/.cache/sembase")
    for model in [MODEL] + ([] if args.skip_zh else [ZH_MODEL]):
        if not (Path(home) / "models" / model).is_dir():
            sys.exit(f"{model} is not in {home}/models: run `target/release/sembase model pull {model}`")
    if not Path(args.sembase).exists():
        sys.exit(f"{args.sembase} not found (cargo build --release)")
    cache = Path(args.cache or Path(home) / "cache/index-bench")
    cache.mkdir(parents=True, exist_ok=True)
    out_dir = cache / "run"
    out_dir.mkdir(exist_ok=True)
    args.cache_dir = cache
    en = english(args, cache, out_dir)
    queue, projections = queue_scaling(args, out_dir, en) if args.queue_workers else ([], [])
    zh = [] if args.skip_zh else chinese(args, cache, out_dir)
    print(f"\nEnglish, {en[0]['documents']} sentences, all-minilm-l6-v2, {args.queries} queries (STS-B test), top 10; "
          f"recall against flat f32 (exact); QPS on {os.cpu_count()} cores, batch = all queries in one call, "
          f"one-at-a-time = first {args.single_queries} queries one call each")
    cols = ["store", "build_seconds", "bytes_per_vector", "qps_batch", "qps_one_at_a_time", "recall@10_vs_exact",
            "qps_batch_vs_flat", "qps_one_at_a_time_vs_flat"]
    print(" | ".join(cols))
    for r in en:
        print(" | ".join(str(r[c]) for c in cols))
    pg = [r for r in en if "table_bytes_per_vector" in r]
    if pg:
        print("\npgvector: bytes per vector in the table's rows and in the HNSW index alone")
        for r in pg:
            print(f"{r['store']}: {r['table_bytes_per_vector']} table + {r['vector_index_bytes_per_vector']} HNSW "
                  f"({r['bytes_per_vector']} with every index), recall@10 {r['recall@10_vs_exact']}")
    if queue:
        print(f"\nqueued builds of {args.queue_docs} sentences (chunks of {args.chunk_size}) on {os.cpu_count()} cores; "
              "embedding-phase rate from `index status`, wall time from queueing to the last worker's exit")
        for r in queue:
            print(f"{r['workers']} workers x {r['threads_each']} threads: {r['rows_per_second_embedding']} rows/s "
                  f"({r['rows_per_second_per_worker']} per worker), {r['wall_seconds']}s wall")
        for p in projections:
            print("projection: " + json.dumps(p))
    if zh:
        print("\nzh/retrieval/lcqmc, multilingual-e5-small (query:/passage: prefixes), recall@10 against the qrels")
        for r in zh:
            print(f"{r['store']}: recall@10 {r['recall@10']} ({r['queries']} queries, {r['documents']} documents, "
                  f"build {r['build_seconds']}s, {r['qps_batch']} queries/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"english": en, "queue": queue, "projections": projections,
                                               "lcqmc": zh}, indent=1))


if __name__ == "__main__":
    main()
