#!/usr/bin/env python3
"""Make the golden (query, document) pair tokenizations that sembase-core's
cross-encoder tests compare against: what transformers' tokenizer gives a
sentence-transformers CrossEncoder (`tokenizer(queries, documents, truncation=True,
max_length=N)`, i.e. `longest_first` truncation) for real tokenizers.

Pairs come from the golden sentences (`sentences.json`, see tools/make_golden.py):
pair i joins sentence i with sentence (7 i + 3) mod n, so short and long texts,
English and Chinese, meet in every combination; the first PAIRS pairs are kept.
At MAX_LENGTH tokens many pairs are cut, one side or both.

Regenerate from the repository root after `make_golden.py` and the model pulls:

    .venv-bench/bin/python tools/make_pair_golden.py --out crates/sembase-core/tests/golden/pairs.json
"""
import argparse
import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_golden import DEFAULT_DATA_ROOT, SEMBASE_HOME, read_jsonl, read_tsv, sha256_text  # noqa: E402

MODELS = ("all-minilm-l6-v2", "multilingual-e5-small", "all-mpnet-base-v2")
PAIRS = 96
MAX_LENGTH = 64


def golden_sentences(golden_dir, data_root):
    """The golden sentences, rebuilt from their locators and checked against their digests."""
    listing = json.loads((golden_dir / "sentences.json").read_text(encoding="utf-8"))
    files = {}
    texts = []
    for loc in listing["sentences"]:
        if loc["source"] not in files:
            path = data_root / loc["source"]
            files[loc["source"]] = read_jsonl(path) if path.suffix == ".jsonl" else read_tsv(path)
        rows = files[loc["source"]]
        text = " ".join(v for v in (rows[p["row"]].get(p["field"], "") for p in loc["parts"]) if v)
        if sha256_text(text) != loc["sha256"]:
            sys.exit(f"make_pair_golden: {loc['source']} differs from the golden sentence list")
        texts.append(text)
    return texts


def pair_indices(count):
    """(i, 7 i + 3 mod count) for the first PAIRS sentences."""
    return [(i, (7 * i + 3) % count) for i in range(min(PAIRS, count))]


def model_record(model_dir, texts, pairs):
    """Ids and (when the tokenizer returns them) segment ids of every pair."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer([texts[a] for a, _ in pairs], [texts[b] for _, b in pairs],
                        truncation=True, max_length=MAX_LENGTH)
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "input_ids": encoded["input_ids"],
        "token_type_ids": encoded.get("token_type_ids"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--models-root", type=Path, default=SEMBASE_HOME / "models")
    args = parser.parse_args()
    texts = golden_sentences(args.out.parent, args.data_root)
    pairs = pair_indices(len(texts))
    records = {}
    for name in MODELS:
        model_dir = args.models_root / name
        if not (model_dir / "tokenizer.json").exists():
            sys.exit(f"make_pair_golden: {model_dir} is missing (`target/release/sembase model pull {name}`)")
        records[name] = model_record(model_dir, texts, pairs)
    document = {
        "reference": {"transformers": transformers.__version__},
        "max_length": MAX_LENGTH,
        "pairs": pairs,
        "models": records,
    }
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
