"""Checks that PyTorch + PEFT load an adapter directory written by `sembase train --lora`
and embed as `sembase embed` does (issue 28: the output loads "where the format allows").

For each adapter directory given: the base named by adapter_config.json (safetensors)
is loaded with transformers, the adapter with `PeftModel.from_pretrained`, and each
text is embedded alone with the export's pooling (1_Pooling/config.json: last token or
mean), normalised when the export has a Normalize module, under a bidirectional mask
when its sentence_bert_config.json sets `is_causal: false` (passed here as a 4D mask,
as LLM2Vec patches it, so that the check does not depend on the transformers version). The same texts go through
`sembase embed`; prints the lowest cosine and fails below --min-cosine.

  .venv-bench/bin/python tools/check_peft_load.py DIR [DIR...] [--texts FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModel

TEXTS = ["the cat sat on a mat", "blue is the sky", "a big dog ran far away", "the bird is small"]


def pooling_of(export):
    with open(os.path.join(export, "1_Pooling", "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    raise SystemExit(f"{export}: pooling {cfg} is neither last-token nor mean")


def normalises(export):
    with open(os.path.join(export, "modules.json")) as f:
        return any(m["type"].endswith("Normalize") for m in json.load(f))


def peft_vectors(export, texts, adapter=True):
    with open(os.path.join(export, "adapter_config.json")) as f:
        base = json.load(f)["base_model_name_or_path"]
    with open(os.path.join(export, "sentence_bert_config.json")) as f:
        causal = json.load(f).get("config_kwargs", {}).get("is_causal", True)
    model = AutoModel.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, export).eval()
    tokenizer = Tokenizer.from_file(os.path.join(export, "tokenizer.json"))
    pooling = pooling_of(export)
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text).ids])
        n = ids.shape[1]
        kwargs = {}
        if not causal:
            kwargs["attention_mask"] = torch.zeros(1, 1, n, n)  # additive: every token sees every token
        with torch.no_grad():
            if adapter:
                states = model(input_ids=ids, use_cache=False, **kwargs).last_hidden_state[0]
            else:
                with model.disable_adapter():
                    states = model(input_ids=ids, use_cache=False, **kwargs).last_hidden_state[0]
        vector = states[-1] if pooling == "last" else states.mean(0)
        if normalises(export):
            vector = torch.nn.functional.normalize(vector, dim=0)
        out.append(vector)
    return out


def sembase_vectors(binary, export, texts):
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = os.path.join(tmp, "in.txt"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w") as f:
            f.write("\n".join(texts) + "\n")
        subprocess.run([binary, "embed", "--model", export, "--input", inp, "--output", outp], check=True)
        with open(outp) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return [torch.tensor(r["embedding"] if isinstance(r, dict) else r) for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+")
    ap.add_argument("--texts", help="one text per line (default: four short sentences)")
    ap.add_argument("--binary", default="target/release/sembase")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    args = ap.parse_args()
    texts = TEXTS
    if args.texts:
        with open(args.texts) as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    failed = False
    for export in args.exports:
        theirs = peft_vectors(export, texts)
        ours = sembase_vectors(args.binary, export, texts)
        cosines = [torch.nn.functional.cosine_similarity(a, b, dim=0).item() for a, b in zip(theirs, ours)]
        worst = min(cosines)
        # The adapter must act, or the comparison above shows nothing about it.
        base = peft_vectors(export, texts, adapter=False)
        moved = min(torch.nn.functional.cosine_similarity(a, b, dim=0).item() for a, b in zip(theirs, base))
        print(f"{export}: PEFT vs sembase embed, lowest cosine over {len(texts)} texts {worst:.6f} "
              f"(adapter on vs off in PEFT: {moved:.4f})")
        failed |= worst < args.min_cosine or moved > args.min_cosine
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
