#!/usr/bin/env python3
"""Reference fixtures for sembase's decoder-only models (issue 9).

Tiny part (always): random LLaMA / Qwen2 / Qwen3 configs made with transformers,
exercising grouped-query attention, RoPE scaling (llama3, linear), Qwen3's q/k norm,
an explicit head_dim and tied embeddings. For each: config.json + model.safetensors
and expected.json (a right-padded id batch with its mask, the last hidden states of
every position, last-token pooled vectors, and next-token logits of the last token)
under crates/sembase-core/tests/decoder/<name>/.

SmolLM2 part (--gguf PATH): transformers' LlamaForCausalLM on the GGUF's weights
(dequantised by transformers' GGUF loader, which uses the `gguf` package and
un-permutes q/k), tokenised by transformers' own GGUF tokenizer; writes
tests/decoder/smollm2_reference.json: 20 STS-B test sentences, their ids, the
last-token states (each sentence alone, no padding) and a greedy next token.

Run from the repository root with .venv-bench (torch, transformers, safetensors, gguf):
  make bench-env    # once: .venv-bench with bench/requirements.txt
  .venv-bench/bin/python tools/make_decoder_fixtures.py \
      [--gguf "${SEMBASE_HOME:-$HOME/.cache/sembase}/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"]
The GGUF comes from `target/release/sembase model pull smollm2-135m`; the STS-B sentences from
../shared/data beside the repository.
"""
import argparse
import json
import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "sembase-core", "tests", "decoder")
# The shared data, beside the repository.
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

COMMON = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2)

TINY = {
    # GQA 4/2, llama3 RoPE scaling (some frequencies kept, some divided, some smoothed), tied embeddings.
    "llama_tiny": (LlamaConfig, LlamaForCausalLM, dict(
        rope_theta=500.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    # q/k/v bias, linear RoPE scaling, separate lm_head.
    "qwen2_tiny": (Qwen2Config, Qwen2ForCausalLM, dict(
        rope_theta=1000.0, tie_word_embeddings=False, rope_scaling={"type": "linear", "factor": 2.0},
        use_sliding_window=False)),
    # per-head q/k RMSNorm, head_dim 16 != hidden/heads, tied embeddings.
    "qwen3_tiny": (Qwen3Config, Qwen3ForCausalLM, dict(
        rope_theta=10000.0, tie_word_embeddings=True, head_dim=16, attention_bias=False,
        use_sliding_window=False)),
}

# Right-padded batch (pad id 0): lengths 9, 5, 1, 7.
LENGTHS = [9, 5, 1, 7]


def tiny_fixture(name, cfg_cls, model_cls, extra, seed):
    torch.manual_seed(seed)
    cfg = cfg_cls(**COMMON, **extra)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval()
    with torch.no_grad():
        # Larger than the default init so every block moves the result.
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.25 * torch.randn_like(p))
    width = max(LENGTHS)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    mask = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    for r, n in enumerate(LENGTHS):
        ids[r, :n] = torch.randint(3, cfg.vocab_size, (n,), generator=gen)
        mask[r, :n] = 1
    with torch.no_grad():
        states = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask).logits
    last = torch.tensor(LENGTHS) - 1
    rows = torch.arange(len(LENGTHS))
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra_file in ("generation_config.json",):
        p = os.path.join(d, extra_file)
        if os.path.exists(p):
            os.remove(p)
    if name == "llama_tiny":
        # Published checkpoints (SmolLM2, Qwen3-Embedding) carry the transformers 4
        # form, `rope_theta` + `rope_scaling`; transformers 5 writes `rope_parameters`.
        # Keep one fixture in each form.
        cp = os.path.join(d, "config.json")
        with open(cp) as f:
            c = json.load(f)
        params = c.pop("rope_parameters")
        c["rope_theta"] = params.pop("rope_theta")
        c["rope_scaling"] = params
        with open(cp, "w") as f:
            json.dump(c, f, indent=2)
    expected = {
        "ids": ids.tolist(), "mask": mask.tolist(),
        "states": [[[round(v, 6) for v in tok] for tok in row] for row in states.tolist()],
        "pooled": [[round(v, 6) for v in row] for row in states[rows, last].tolist()],
        "logits": [[round(v, 5) for v in row] for row in logits[rows, last].tolist()],
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f)
    print("wrote", d, sum(p.numel() for p in model.parameters()), "parameters")


def smollm2_fixture(gguf_path, n=20):
    from transformers import AutoTokenizer, LlamaForCausalLM as CausalLM
    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = CausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32).eval()
    sentences = []
    with open(DATA_ROOT / "en" / "stsb" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            a, b, _ = line.rstrip("\n").split("\t")
            for s in (a, b):
                if s not in sentences:
                    sentences.append(s)
            if len(sentences) >= n:
                break
    sentences = sentences[:n]
    # A few sentences with digits and punctuation, to test the pre-tokenizer.
    sentences[-1] = "In 2013, 47 people paid $3.50 each -- isn't that odd?"
    items = []
    with torch.no_grad():
        for s in sentences:
            ids = tok(s, add_special_tokens=True)["input_ids"]
            h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            items.append({"text": s, "ids": ids, "last": [round(v, 6) for v in h.tolist()]})
        prompt = "The capital of France is"
        pids = tok(prompt)["input_ids"]
        logits = model(input_ids=torch.tensor([pids])).logits[0, -1]
        nxt = int(logits.argmax())
    out = {"gguf": name, "sentences": items,
           "greedy": {"prompt": prompt, "ids": pids, "next_id": nxt, "next_text": tok.decode([nxt])}}
    path = os.path.join(OUT, "smollm2_reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print("wrote", path, "next token", repr(tok.decode([nxt])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (from `sembase model pull smollm2-135m`)")
    args = ap.parse_args()
    if args.gguf and not os.path.isfile(args.gguf):
        ap.error(f"no {args.gguf}: run `target/release/sembase model pull smollm2-135m`")
    for seed, (name, (cfg_cls, model_cls, extra)) in enumerate(TINY.items()):
        tiny_fixture(name, cfg_cls, model_cls, extra, 100 + seed)
    if args.gguf:
        smollm2_fixture(args.gguf)


if __name__ == "__main__":
    main()
