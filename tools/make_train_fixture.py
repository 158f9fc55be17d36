#!/usr/bin/env python3
"""Make the PyTorch reference for sembase-train's loss/gradient parity test.

Builds a tiny random BERT (transformers' BertModel, dropout off) with a small
WordLevel tokenizer, saves it as a sentence-transformers directory, and records
for a fixed batch the in-batch-negatives loss (scale 20, mean pooling), the
CoSENT loss, and sentence-transformers' AnglELoss and CoSENTLoss +
MultipleNegativesRankingLoss (over the pairs scored 4 and up) with their
gradients for a few parameters.

Regenerate from the repository root, in an environment with torch,
transformers, safetensors, tokenizers and sentence-transformers:

    make bench-env    # once: .venv-bench with bench/requirements.txt
    .venv-bench/bin/python tools/make_train_fixture.py --out crates/sembase-train/tests/fixtures/tiny-bert
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss, MultipleNegativesRankingLoss
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel

WORDS = ("the cat dog sat ran on a mat big red small far away home fast slow bird "
         "flew over tree green sky blue sun was is and").split()
ANCHORS = ["the cat sat on a mat", "a big dog ran far away", "the bird flew over the tree",
           "the sky is blue", "a small red cat ran home"]
POSITIVES = ["a cat sat on the mat", "the big dog ran away", "a bird flew over a green tree",
             "blue is the sky", "the small red cat ran fast home"]
STS_SCORES = [4.5, 3.0, 5.0, 1.0, 2.5]
# The pairs sembase's cosent+mnrl takes for positives: the top fifth of the score range (>= 4.2).
POSITIVE_ROWS = [i for i, s in enumerate(STS_SCORES) if s >= 4.2]
CHECKED = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
           "encoder.layer.1.output.LayerNorm.weight", "encoder.layer.1.intermediate.dense.bias"]
SCALE = 20.0


def tokenizer_json():
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }


def write_model(out: Path, model: BertModel, config: BertConfig):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))


def embed(model, tok, texts):
    encs = tok.encode_batch(texts)
    width = max(len(e.ids) for e in encs)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in encs])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in encs])
    states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cos_matrix(a, b):
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def in_batch_negatives(a, p):
    logits = cos_matrix(a, p) * SCALE
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(a)))


def cosent(a, b, scores):
    cos = (torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(1) * SCALE
    diff = cos[None, :] - cos[:, None]
    s = torch.tensor(scores)
    keep = s[:, None] > s[None, :]
    diff = diff - (~keep).float() * 1e12
    return torch.logsumexp(torch.cat([torch.zeros(1), diff.flatten()]), 0)


def cosent_mnrl(a, b, scores):
    """sembase's `--loss cosent+mnrl`: CoSENT on all pairs plus in-batch negatives over the positives."""
    ranking = CoSENTLoss(model=None, scale=SCALE).compute_loss_from_embeddings([a, b], torch.tensor(scores))
    rows = torch.tensor(POSITIVE_ROWS)
    mnrl = MultipleNegativesRankingLoss(model=None, scale=SCALE)
    return ranking + mnrl.compute_loss_from_embeddings([a[rows], b[rows]], None)


def record(model, loss):
    model.zero_grad()
    loss.backward()
    params = dict(model.named_parameters())
    return {"loss": loss.item(), "grads": {n: params[n].grad.flatten().tolist() for n in CHECKED}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(1234)
    config = BertConfig(vocab_size=4 + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    model = BertModel(config, add_pooling_layer=False)
    # Non-trivial LayerNorm parameters so their gradients are checked meaningfully.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    write_model(args.out, model, config)
    tok = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    a, p = embed(model, tok, ANCHORS), embed(model, tok, POSITIVES)
    mnrl = record(model, in_batch_negatives(a, p))
    a, b = embed(model, tok, ANCHORS), embed(model, tok, POSITIVES)
    cos = record(model, cosent(a, b, STS_SCORES))
    a, b = embed(model, tok, ANCHORS), embed(model, tok, POSITIVES)
    angle = record(model, AnglELoss(model=None, scale=SCALE).compute_loss_from_embeddings(
        [a, b], torch.tensor(STS_SCORES)))
    a, b = embed(model, tok, ANCHORS), embed(model, tok, POSITIVES)
    combined = record(model, cosent_mnrl(a, b, STS_SCORES))
    reference = {"reference": f"torch {torch.__version__}", "scale": SCALE, "anchors": ANCHORS,
                 "positives": POSITIVES, "sts_scores": STS_SCORES, "in_batch_negatives": mnrl, "cosent": cos,
                 "angle": angle, "positive_rows": POSITIVE_ROWS, "cosent_mnrl": combined}
    (args.out / "reference.json").write_text(json.dumps(reference))
    print("wrote", args.out, "in_batch_negatives", mnrl["loss"], "cosent", cos["loss"], "angle", angle["loss"],
          "cosent+mnrl", combined["loss"])


if __name__ == "__main__":
    main()
