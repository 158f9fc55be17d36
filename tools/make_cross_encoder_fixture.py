#!/usr/bin/env python3
"""Make the PyTorch/sentence-transformers reference for sembase's cross-encoder (reranker) parity tests.

Writes two tiny random rerankers, each saved *through* sentence-transformers'
``CrossEncoder.save`` so the directory layout is exactly what that library writes:

  <out>/tiny-bert-cross-encoder     BertForSequenceClassification, num_labels=1,
                                    WordLevel tokenizer with BertProcessing
                                    ([CLS] A [SEP] B [SEP], type ids 0 then 1)
  <out>/tiny-roberta-cross-encoder  XLMRobertaForSequenceClassification, num_labels=1,
                                    WordLevel tokenizer with RobertaProcessing
                                    (<s> A </s></s> B </s>, no token_type_ids)

Both use hidden 32, 2 layers, 4 heads, intermediate 64 and dropout 0, so the
forward pass (eval or train mode) is deterministic. Each directory gets a
``reference.json`` with, for a fixed list of (query, document) pairs:

  * the HF tokenizer's pair encodings, untruncated and truncated to 16 tokens
    (truncation=True, i.e. "longest_first");
  * raw logits of the transformers model and ``CrossEncoder.predict`` scores
    (default activation: sigmoid for num_labels=1), at full length and with
    ``CrossEncoder(dir, max_length=16)``;
  * the mean BCE-with-logits loss (sentence-transformers' BinaryCrossEntropyLoss,
    no pos_weight) for binary labels, and a listwise loss (per group of one query
    with [positive, negative, negative] documents: cross-entropy of the softmax
    over the group's logits with the positive at index 0, averaged over groups),
    each with the gradients of a few parameters (embedding tables: only the rows
    of the token ids used);
  * the names and shapes of all tensors in model.safetensors.

Regenerate from the repository root, in an environment with torch, transformers,
sentence-transformers, safetensors and tokenizers:

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python tools/make_cross_encoder_fixture.py --out crates/sembase-core/tests/fixtures
"""
import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification)

SEED = 20240607
MAX_LENGTH = 64          # tokenizer model_max_length
SHORT = 16               # the truncated variant
LEXICON = ("what where who river boat sails fish swims lake deep cold water bright moon night stars "
           "shine over quiet town people sleep under old bridge stone walls wind blows through trees "
           "leaves fall in autumn when of the a is are at and sleeps falls").split()

# (query, document) pairs. Pair 4 only overflows 16 tokens on the document side;
# pair 5 overflows on both sides, which pins down the "longest_first" strategy.
PAIRS = [
    ("where is the boat", "the boat sails over the lake"),
    ("what fish swims", "stars shine at night"),
    ("moon", "the bright moon is over the quiet town"),
    ("who sleeps under the bridge", "people sleep under the old stone bridge"),
    ("cold water", "the lake is deep and the water is cold when the wind blows through the trees of the old town"),
    ("what falls in autumn when the wind blows through the trees",
     "leaves fall in autumn when the cold wind blows over the old stone walls of the quiet town"),
]
BCE_LABELS = [1, 0, 1, 0, 1, 0]
# Listwise groups: one query, documents[0] is the positive.
GROUPS = [
    {"query": "where is the boat",
     "documents": ["the boat sails over the lake", "stars shine over the town", "people sleep"]},
    {"query": "what falls in autumn",
     "documents": ["leaves fall in autumn", "the fish swims in deep cold water", "the moon is bright"]},
]


# --------------------------------------------------------------------------- tokenizers

def vocabulary(specials):
    return {tok: i for i, tok in enumerate(list(specials) + LEXICON)}


def word_level_files(specials, unk, post_processor, input_names, special_names):
    """tokenizer.json, tokenizer_config.json and the vocabulary of a WordLevel tokenizer."""
    vocab = vocabulary(specials)
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post_processor(vocab),
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk},
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": input_names,
        **special_names,
        "padding_side": "right", "truncation_side": "right",
        "model_max_length": MAX_LENGTH, "clean_up_tokenization_spaces": False,
    }
    return tokenizer, config, vocab


def bert_tokenizer_files():
    return word_level_files(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[UNK]",
        lambda v: {"type": "BertProcessing", "sep": ["[SEP]", v["[SEP]"]], "cls": ["[CLS]", v["[CLS]"]]},
        ["input_ids", "token_type_ids", "attention_mask"],
        {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"})


def roberta_tokenizer_files():
    return word_level_files(
        ["<s>", "<pad>", "</s>", "<unk>"], "<unk>",
        lambda v: {"type": "RobertaProcessing", "sep": ["</s>", v["</s>"]], "cls": ["<s>", v["<s>"]],
                   "trim_offsets": True, "add_prefix_space": False},
        ["input_ids", "attention_mask"],
        {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
         "pad_token": "<pad>", "unk_token": "<unk>"})


# --------------------------------------------------------------------------- models

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
              num_labels=1, initializer_range=0.25, layer_norm_eps=1e-12)


def build_bert(vocab):
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=MAX_LENGTH, type_vocab_size=2,
                        pad_token_id=vocab["[PAD]"], **COMMON)
    return BertForSequenceClassification(config)


def build_roberta(vocab):
    # RoBERTa positions start at pad_token_id + 1 = 2, so a 64-token input needs 66 rows
    # (as xlm-roberta-base has 514 for model_max_length 512).
    config = XLMRobertaConfig(vocab_size=len(vocab), max_position_embeddings=MAX_LENGTH + 2, type_vocab_size=1,
                              pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                              **COMMON)
    return XLMRobertaForSequenceClassification(config)


def roughen(model):
    """Zero-initialised biases and unit LayerNorm weights would leave parts of the
    parity check toothless; give the biases and LayerNorm parameters a small random offset."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)


CHECKED = {
    "bert": ["bert.embeddings.word_embeddings.weight", "bert.embeddings.token_type_embeddings.weight",
             "bert.embeddings.LayerNorm.weight",
             "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.bias",
             "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"],
    "roberta": ["roberta.embeddings.word_embeddings.weight", "roberta.embeddings.token_type_embeddings.weight",
                "roberta.embeddings.LayerNorm.weight",
                "roberta.encoder.layer.0.attention.self.query.weight", "roberta.encoder.layer.1.output.dense.bias",
                "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                "classifier.out_proj.bias"],
}


# --------------------------------------------------------------------------- helpers

def f32(values):
    """float32 values as the shortest decimal that round-trips (keeps the JSON small)."""
    out = []
    for v in values:
        for digits in range(6, 10):
            s = f"{v:.{digits}g}"
            if torch.tensor(float(s), dtype=torch.float32).item() == v:
                break
        out.append(float(s))
    return out


def tokenize(tok, pairs, max_length):
    enc = tok([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length)
    keys = ["input_ids", "token_type_ids"] if "token_type_ids" in enc else ["input_ids"]
    return {k: [list(row) for row in enc[k]] for k in keys}


def forward_logits(hf_model, tok, pairs, max_length):
    """Raw logits, one pair at a time (no padding), through the plain transformers model."""
    out = []
    for q, d in pairs:
        enc = tok(q, d, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            out.append(hf_model(**enc).logits[0, 0].item())
    return out


def batch_logits(ce, queries, documents):
    """Logits the way sentence-transformers' losses compute them during training."""
    features = ce.preprocess(list(zip(queries, documents)))
    return ce(features)["scores"].view(-1), features


def grads(hf_model, names, features):
    """Gradients of the checked parameters; for the word-embedding table only the
    rows of the token ids in the batch (all other rows are zero)."""
    used = sorted(set(features["input_ids"][features["attention_mask"].bool()].tolist()))
    params = dict(hf_model.named_parameters())
    result = {}
    for name in names:
        g = params[name].grad
        if name.endswith("word_embeddings.weight"):
            result[name] = {"shape": list(g.shape), "rows": used, "values": [f32(g[r].tolist()) for r in used]}
        else:
            result[name] = {"shape": list(g.shape), "values": f32(g.flatten().tolist())}
    return result


def make_one(kind, out: Path):
    torch.manual_seed(SEED)
    if kind == "bert":
        tok_json, tok_config, vocab = bert_tokenizer_files()
        model = build_bert(vocab)
    else:
        tok_json, tok_config, vocab = roberta_tokenizer_files()
        model = build_roberta(vocab)
    roughen(model)
    model.eval()
    for q, d in PAIRS + [(g["query"], doc) for g in GROUPS for doc in g["documents"]]:
        assert all(w in vocab for w in (q + " " + d).split()), (q, d)

    # 1. Plain transformers directory, then let sentence-transformers load and save it.
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        model.save_pretrained(raw)
        (raw / "tokenizer.json").write_text(json.dumps(tok_json))
        (raw / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
        ce = CrossEncoder(str(raw), device="cpu")
        before = ce.predict(PAIRS, convert_to_tensor=True)
        if out.exists():
            shutil.rmtree(out)
        ce.save(str(out))

    # 2. Reload what was written; everything below uses only the saved directory.
    ce = CrossEncoder(str(out), device="cpu")
    ce16 = CrossEncoder(str(out), device="cpu", max_length=SHORT)
    hf_model = ce.model
    tok = AutoTokenizer.from_pretrained(str(out))
    saved_config = json.loads((out / "config.json").read_text())
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())

    full_tok = tokenize(tok, PAIRS, MAX_LENGTH)
    short_tok = tokenize(tok, PAIRS, SHORT)
    assert any(len(a) != len(b) for a, b in zip(full_tok["input_ids"], short_tok["input_ids"]))
    # CrossEncoder(max_length=16) must tokenize exactly like the plain tokenizer with max_length=16.
    st16 = ce16.preprocess(PAIRS)
    for i, ids in enumerate(short_tok["input_ids"]):
        row = st16["input_ids"][i][st16["attention_mask"][i].bool()].tolist()
        assert row == ids, (i, row, ids)

    logits = forward_logits(hf_model, tok, PAIRS, MAX_LENGTH)
    logits16 = forward_logits(hf_model, tok, PAIRS, SHORT)
    scores = ce.predict(PAIRS, convert_to_tensor=True)
    scores16 = ce16.predict(PAIRS, convert_to_tensor=True)
    raw_scores = ce.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    assert torch.allclose(raw_scores, torch.tensor(logits), atol=1e-5), (raw_scores, logits)
    assert torch.allclose(scores, torch.sigmoid(torch.tensor(logits)), atol=1e-6)
    assert torch.allclose(scores16, torch.sigmoid(torch.tensor(logits16)), atol=1e-6)

    # 3. Training reference (dropout is 0, so train mode changes nothing).
    ce.train()
    checked = CHECKED[kind]
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    hf_model.zero_grad()
    pair_logits, features = batch_logits(ce, queries, documents)
    labels = torch.tensor(BCE_LABELS, dtype=torch.float32)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pair_logits, labels)
    st_bce = BinaryCrossEntropyLoss(ce)([queries, documents], labels)
    assert abs(bce.item() - st_bce.item()) < 1e-6, (bce.item(), st_bce.item())
    bce.backward()
    bce_ref = {"labels": BCE_LABELS, "logits": f32(pair_logits.tolist()), "loss": bce.item(),
               "grads": grads(hf_model, checked, features)}

    hf_model.zero_grad()
    lq = [g["query"] for g in GROUPS for _ in g["documents"]]
    ld = [doc for g in GROUPS for doc in g["documents"]]
    flat_logits, features = batch_logits(ce, lq, ld)
    group_logits = flat_logits.view(len(GROUPS), -1)
    listwise = torch.nn.functional.cross_entropy(group_logits, torch.zeros(len(GROUPS), dtype=torch.long))
    listwise.backward()
    list_ref = {"groups": GROUPS, "positive_index": 0, "group_size": len(GROUPS[0]["documents"]),
                "pair_order": "group-major: pairs (groups[g].query, groups[g].documents[j]) for g, then j",
                "logits": [f32(row) for row in group_logits.tolist()], "loss": listwise.item(),
                "grads": grads(hf_model, checked, features)}
    hf_model.zero_grad()
    ce.eval()

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        tensors = {name: list(f.get_slice(name).get_shape()) for name in sorted(f.keys())}

    # 4. The saved directory must reproduce the pre-save scores bit for bit.
    assert torch.equal(before, scores), (before, scores)
    again = CrossEncoder(str(out), device="cpu").predict(PAIRS, convert_to_tensor=True)
    assert torch.equal(again, scores), (again, scores)

    reference = {
        "reference": f"torch {torch.__version__}, transformers {st_config['__version__']['transformers']}, "
                     f"sentence-transformers {st_config['__version__']['sentence_transformers']}",
        "architecture": saved_config["architectures"][0],
        "saved_config_keys": {
            "config.json": sorted(saved_config),
            "config.json[sentence_transformers]": saved_config.get("sentence_transformers"),
            "config_sentence_transformers.json": st_config,
            "files": sorted(p.name for p in out.iterdir()),
        },
        "activation": "sigmoid",
        "model_max_length": MAX_LENGTH,
        "max_length": SHORT,
        "truncation": "longest_first",
        "truncation_note": "tokenizers LongestFirst over the budget max_length minus the special tokens: "
                           "if the shorter side fits in half the budget the longer side gets the rest, "
                           "otherwise each side gets half and the longer side the odd token (see pairs 4 and 5)",
        "pairs": [list(p) for p in PAIRS],
        "input_ids": short_tok["input_ids"],
        "input_ids_full": full_tok["input_ids"],
        "logits": f32(logits),
        "scores": f32(scores.tolist()),
        "logits_max16": f32(logits16),
        "scores_max16": f32(scores16.tolist()),
        "bce": bce_ref,
        "listwise": list_ref,
        "training_max_length": MAX_LENGTH,
        "tensors": tensors,
    }
    if "token_type_ids" in short_tok:
        reference["token_type_ids"] = short_tok["token_type_ids"]
        reference["token_type_ids_full"] = full_tok["token_type_ids"]
    (out / "reference.json").write_text(json.dumps(reference, separators=(",", ":")))
    print(f"wrote {out}: logits {[round(x, 4) for x in logits]} bce {bce.item():.6f} listwise {listwise.item():.6f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="parent directory; tiny-bert-cross-encoder/ and tiny-roberta-cross-encoder/ go in it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    make_one("bert", args.out / "tiny-bert-cross-encoder")
    make_one("roberta", args.out / "tiny-roberta-cross-encoder")


if __name__ == "__main__":
    main()
