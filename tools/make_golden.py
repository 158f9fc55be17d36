#!/usr/bin/env python3
"""Make the golden reference embeddings that sembase-core's tests compare against.

Regenerate: pull the models into the store, $SEMBASE_HOME (default ~/.cache/sembase)
(`target/release/sembase model pull all-minilm-l6-v2`, `... all-mpnet-base-v2`,
`... multilingual-e5-small`), then run, from the repository root, in a Python environment
with torch, transformers, sentence-transformers and tokenizers:

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python tools/make_golden.py --out crates/sembase-core/tests/golden

--models-root defaults to the store's models/ directory. Models whose directory
(models-root/<name>) is missing are skipped with a message; all-minilm-l6-v2 is
required, its tokenizer ranks the MS MARCO passages.

Sentences. The data's licences forbid redistributing it inside the project, so
`sentences.json` holds locators, not text: each entry names its data file (relative
to the data root, `../shared/data` from the repository root), the rows and fields
that make it, and the SHA-256 of the resulting UTF-8 text. A text is its parts'
values joined by one space, empty values left out. Rows count from 0 over data rows:
TSV lines after the header, split on tabs; JSONL lines. The picks, all deterministic:

- en/stsb/test.tsv (unique sentences, sentence1 then sentence2, in row order):
  90 evenly spaced ones (`unique[i * len(unique) // 90]`), then 40 "odd" ones not
  already taken: every sentence with a non-ASCII character, every one with a run of
  spaces, and the rest evenly spaced over those that start in lower case or contain a
  character outside `[A-Za-z0-9 .,'?!-]`.
- en/retrieval/msmarco-5k/corpus.jsonl (title + " " + text): the 40 passages with
  the most all-minilm-l6-v2 tokens (no truncation, special tokens included; ties in
  file order). The passages longer than 256 tokens come first if there are any; this
  data has none, so the script also adds 10 joined texts (passages 1-3, 4-6, ... of
  that ranking, each over 512 tokens) so that every model's truncation is exercised.
- zh/lcqmc/test.tsv and zh/stsb/test.tsv: 70 evenly spaced unique sentences each.

The sources are interleaved round-robin, so the first 20 sentences (whose token ids
each model file records in `token_ids_head`) cover every source.

Per model, `<model>.json` holds the reference library and versions, the input
prefix, max_seq_length, per-sentence token counts (after truncation, special tokens
included), the first 20 sentences' token ids and the L2-normalised embeddings, floats
rounded to 7 significant digits, in sentences.json order.
"""
import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
from transformers import PreTrainedTokenizerFast, XLMRobertaModel

import sentence_transformers
from sentence_transformers import SentenceTransformer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
# The model store, as sembase finds it: $SEMBASE_HOME, else ~/.cache/sembase.
SEMBASE_HOME = Path(os.environ.get("SEMBASE_HOME") or Path.home() / ".cache" / "sembase")

ST_MODELS = ("all-minilm-l6-v2", "all-mpnet-base-v2")
E5_MODEL = "multilingual-e5-small"
E5_PREFIX = "query: "
E5_MAX_LENGTH = 512
ENCODE_BATCH_SIZE = 16
HEAD_SENTENCES = 20
SIGNIFICANT_DIGITS = 7

STSB_EN = "en/stsb/test.tsv"
MSMARCO = "en/retrieval/msmarco-5k/corpus.jsonl"
LCQMC = "zh/lcqmc/test.tsv"
STSB_ZH = "zh/stsb/test.tsv"

STSB_EN_PLAIN = 90
STSB_EN_ODD = 40
MSMARCO_LONG = 40
MSMARCO_LONG_TOKENS = 256
MSMARCO_JOINED = 10
MSMARCO_JOINED_PARTS = 3
MSMARCO_JOINED_MIN_TOKENS = 512
CHINESE_PER_SET = 70
ODD_CHARACTER = re.compile(r"[^A-Za-z0-9 .,'?!-]")


def sha256_text(text):
    """Hex SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_tsv(path):
    """Data rows of a TSV file with a header line, as dicts keyed by column name."""
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def read_jsonl(path):
    """Rows of a JSONL file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def entry(source, parts, values):
    """A sentence: its data file, its parts ({"row", "field"}) and the text they make."""
    return {"source": source, "parts": parts, "text": " ".join(v for v in values if v)}


def unique_pair_sentences(rows, source):
    """Unique sentence1/sentence2 values of a pairs or STS file, in row order."""
    seen = {}
    for index, row in enumerate(rows):
        for field in ("sentence1", "sentence2"):
            value = row[field]
            if value not in seen:
                seen[value] = entry(source, [{"row": index, "field": field}], [value])
    return list(seen.values())


def pick_evenly(items, count):
    """`count` items at evenly spaced positions (all of them if there are fewer)."""
    count = max(count, 0)
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def with_rule(entries, rule):
    """Copies of the entries labelled with the rule that picked them."""
    return [{**e, "rule": rule} for e in entries]


def pick_stsb_en(data_root):
    """English STS-B test: evenly spaced sentences, then odd-looking ones."""
    unique = unique_pair_sentences(read_tsv(data_root / STSB_EN), STSB_EN)
    plain = pick_evenly(unique, STSB_EN_PLAIN)
    taken = {e["text"] for e in plain}
    rest = [e for e in unique if e["text"] not in taken]
    non_ascii = [e for e in rest if not e["text"].isascii()]
    spaced = [e for e in rest if e["text"].isascii() and "  " in e["text"]]
    strong = {e["text"] for e in non_ascii + spaced}
    looks_odd = [
        e for e in rest
        if e["text"] not in strong and (e["text"][:1].islower() or ODD_CHARACTER.search(e["text"]))
    ]
    odd = (non_ascii + spaced + pick_evenly(looks_odd, STSB_EN_ODD - len(strong)))[:STSB_EN_ODD]
    return with_rule(plain, "evenly-spaced"), with_rule(odd, "odd")


def msmarco_entry(index, row):
    """An MS MARCO passage as title + " " + text (title left out when empty)."""
    parts = [{"row": index, "field": f} for f in ("title", "text") if row[f]]
    return entry(MSMARCO, parts, [row["title"], row["text"]])


def token_length(tokenizer, text):
    """Tokens in a text, special tokens included, without truncation."""
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def pick_msmarco(data_root, tokenizer):
    """MS MARCO: the longest passages, and joined ones longer than every max length."""
    rows = read_jsonl(data_root / MSMARCO)
    passages = [msmarco_entry(i, row) for i, row in enumerate(rows)]
    lengths = [token_length(tokenizer, p["text"]) for p in passages]
    ranked = sorted(range(len(passages)), key=lambda i: (-lengths[i], i))
    over = [i for i in range(len(passages)) if lengths[i] > MSMARCO_LONG_TOKENS]
    chosen = over[:MSMARCO_LONG]
    chosen += [i for i in ranked if lengths[i] <= MSMARCO_LONG_TOKENS][: MSMARCO_LONG - len(chosen)]
    rule = f"longer-than-{MSMARCO_LONG_TOKENS}" if len(over) >= MSMARCO_LONG else "longest"
    long_entries = with_rule([passages[i] for i in chosen], rule)
    joined = []
    if len(over) < MSMARCO_LONG:
        for k in range(MSMARCO_JOINED):
            group = [passages[i] for i in ranked[k * MSMARCO_JOINED_PARTS:(k + 1) * MSMARCO_JOINED_PARTS]]
            parts = [part for p in group for part in p["parts"]]
            joined.append(entry(MSMARCO, parts, [p["text"] for p in group]))
        short = [e for e in joined if token_length(tokenizer, e["text"]) <= MSMARCO_JOINED_MIN_TOKENS]
        if short:
            sys.exit(f"make_golden: a joined MS MARCO text has only {MSMARCO_JOINED_MIN_TOKENS} tokens or fewer")
    return long_entries, with_rule(joined, "joined-longest")


def pick_chinese(data_root, relative):
    """Evenly spaced unique sentences of a Chinese pairs or STS test file."""
    unique = unique_pair_sentences(read_tsv(data_root / relative), relative)
    return with_rule(pick_evenly(unique, CHINESE_PER_SET), "evenly-spaced")


def interleave(groups):
    """Round-robin merge of lists, dropping texts already taken."""
    merged, seen = [], set()
    for position in range(max(len(g) for g in groups)):
        for group in groups:
            if position < len(group) and group[position]["text"] not in seen:
                seen.add(group[position]["text"])
                merged.append(group[position])
    return merged


def select_sentences(data_root, minilm_dir):
    """The golden sentence list: locators plus text, in their final order."""
    tokenizer = SentenceTransformer(str(minilm_dir), device="cpu").tokenizer
    en_plain, en_odd = pick_stsb_en(data_root)
    marco_long, marco_joined = pick_msmarco(data_root, tokenizer)
    groups = [en_plain, en_odd, marco_long, marco_joined,
              pick_chinese(data_root, LCQMC), pick_chinese(data_root, STSB_ZH)]
    return interleave([g for g in groups if g])


def round_significant(matrix):
    """A float matrix as nested lists rounded to SIGNIFICANT_DIGITS digits."""
    return [[float(f"{x:.{SIGNIFICANT_DIGITS}g}") for x in row] for row in matrix.tolist()]


def json_text(obj):
    """JSON for a flat dict, each item of a list of lists/dicts on its own line."""
    def dumps(value):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    fields = []
    for key, value in obj.items():
        if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
            rendered = "[\n" + ",\n".join("  " + dumps(item) for item in value) + "\n]"
        else:
            rendered = dumps(value)
        fields.append(f"{dumps(key)}: {rendered}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def write_sentences(out_dir, sentences):
    """Write sentences.json: locators and text hashes, never the text itself."""
    records = [
        {"source": s["source"], "rule": s["rule"], "parts": s["parts"], "sha256": sha256_text(s["text"])}
        for s in sentences
    ]
    obj = {
        "data_root": "../shared/data (relative to the repository root)",
        "text": "parts' values joined by one space, empty values left out; rows count from 0 over data rows",
        "count": len(records),
        "sentences": records,
    }
    (out_dir / "sentences.json").write_text(json_text(obj), encoding="utf-8")


def model_record(name, reference, prefix, max_seq_length, token_ids, embeddings):
    """The per-model golden file's content."""
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-4):
        sys.exit(f"make_golden: {name} embeddings are not unit length (norms {norms.min()}..{norms.max()})")
    return {
        "model": name,
        "reference": reference,
        "sentences": {"file": "sentences.json", "count": len(token_ids)},
        "prefix": prefix,
        "max_seq_length": max_seq_length,
        "normalized": True,
        "format": f"JSON; floats rounded to {SIGNIFICANT_DIGITS} significant digits",
        "token_counts": [len(ids) for ids in token_ids],
        "token_ids_head": token_ids[:HEAD_SENTENCES],
        "embeddings": round_significant(embeddings),
    }


def library_versions(library):
    """Which library produced a file, with the versions that matter."""
    return {
        "library": library,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }


def st_token_ids(model, text):
    """Token ids a SentenceTransformer feeds its encoder for one text."""
    features = model.preprocess([text])
    count = int(features["attention_mask"][0].sum())
    return features["input_ids"][0][:count].tolist()


def golden_st(name, model_dir, texts):
    """Reference embeddings from sentence-transformers (modules include Normalize)."""
    model = SentenceTransformer(str(model_dir), device="cpu")
    embeddings = model.encode(texts, batch_size=ENCODE_BATCH_SIZE, convert_to_numpy=True)
    token_ids = [st_token_ids(model, t) for t in texts]
    return model_record(name, library_versions("sentence-transformers"), "",
                        model.max_seq_length, token_ids, embeddings)


def e5_tokenizer(model_dir):
    """The XLM-R tokenizer from the model dir's tokenizer.json, special tokens set."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=E5_MAX_LENGTH,
    )
    expected = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "unk_token_id": 3}
    actual = {k: getattr(tokenizer, k) for k in expected}
    if actual != expected:
        sys.exit(f"make_golden: {model_dir} tokenizer special ids {actual}, expected {expected}")
    return tokenizer


def golden_e5(name, model_dir, texts):
    """Reference embeddings from transformers: prefix, mean pooling, L2 norm."""
    tokenizer = e5_tokenizer(model_dir)
    model = XLMRobertaModel.from_pretrained(str(model_dir), add_pooling_layer=False, dtype=torch.float32).eval()
    token_ids, vectors = [], []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(E5_PREFIX + text, truncation=True, max_length=E5_MAX_LENGTH, return_tensors="pt")
            ids = encoded["input_ids"][0].tolist()
            if ids[0] != 0 or ids[-1] != 2:
                sys.exit(f"make_golden: {name} ids do not run <s> ... </s>: {ids[:3]} ... {ids[-3:]}")
            states = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(pooled, p=2, dim=1)[0].numpy())
            token_ids.append(ids)
    return model_record(name, library_versions("transformers"), E5_PREFIX,
                        E5_MAX_LENGTH, token_ids, np.stack(vectors))


def parse_args():
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-root", type=Path, default=SEMBASE_HOME / "models",
                        help="directory holding <model-name>/ dirs (default: the store's, $SEMBASE_HOME/models)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the golden files")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="shared data root")
    return parser.parse_args()


def main():
    """Select sentences, then write one golden file per model present."""
    args = parse_args()
    minilm_dir = args.models_root / ST_MODELS[0]
    if not (minilm_dir / "model.safetensors").exists():
        sys.exit(f"make_golden: {minilm_dir} is missing; it is needed to rank the MS MARCO passages: "
                 f"run `target/release/sembase model pull {ST_MODELS[0]}`")
    args.out.mkdir(parents=True, exist_ok=True)
    sentences = select_sentences(args.data_root, minilm_dir)
    write_sentences(args.out, sentences)
    print(f"sentences.json: {len(sentences)} sentences")
    texts = [s["text"] for s in sentences]
    for name in (*ST_MODELS, E5_MODEL):
        model_dir = args.models_root / name
        if not (model_dir / "model.safetensors").exists():
            print(f"skipping {name}: no model.safetensors in {model_dir} "
                  f"(`target/release/sembase model pull {name}`)", file=sys.stderr)
            continue
        make = golden_e5 if name == E5_MODEL else golden_st
        record = make(name, model_dir, texts)
        path = args.out / f"{name}.json"
        path.write_text(json_text(record), encoding="utf-8")
        print(f"{path}: {len(texts)} embeddings of {len(record['embeddings'][0])} dims")


if __name__ == "__main__":
    main()
