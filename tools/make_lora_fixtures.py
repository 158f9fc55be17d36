#!/usr/bin/env python3
"""Reference fixtures for sembase-train's LoRA parity test on decoder-only models.

For each tiny decoder under crates/sembase-core/tests/decoder/ (llama_tiny, qwen3_tiny;
made by tools/make_decoder_fixtures.py) this wraps transformers' base model (LlamaModel /
Qwen3Model, float32, eager attention, eval mode, no dropout) with a PEFT LoRA adapter
(r 4, alpha 8, no dropout, no bias, on q/k/v/o/gate/up/down_proj), overwrites every lora_A
and lora_B with seeded normal values (std 0.2; B non-zero so the adapter changes the
output) and writes, under crates/sembase-train/tests/fixtures/lora/<name>/:

  adapter_config.json, adapter_model.safetensors
      exactly as PEFT's save_pretrained writes them (keys such as
      base_model.model.layers.0.self_attn.q_proj.lora_A.weight), except that
      base_model_name_or_path is rewritten to the base model's directory relative to
      this one ("../../../../../sembase-core/tests/decoder/<name>") and target_modules
      is sorted (PEFT writes it from a set); the README.md model card it also writes
      is removed.
  expected.json
      four cases, {attention, padding, pooling} =
        (causal, right, last), (causal, left, last),
        (bidirectional, right, mean), (bidirectional, left, mean);
      each a batch of 4 rows of real lengths 9, 5, 3, 7 (pad id 0). Every case holds
      the same real tokens per row (ids drawn seeded from 3..vocab_size-1), so right
      and left padding must give the same pooled vectors, loss and gradients (checked
      here); the ids are redrawn, deterministically, until every case's loss lies in
      [0.1, 10], so that no gradient is vanishingly small. Position ids count the real tokens before a token (clamp(cumsum(mask)-1,
      0)), so a left-padded row equals its unpadded self. "causal" is the model's own
      causal mask plus padding; "bidirectional" lets every query attend to every real
      key of its row. "last" pools the final-norm hidden state of each row's last real
      token, "mean" averages it over the real tokens. Recorded per case: ids, mask,
      pooled (4 x hidden), loss (in-batch negatives, anchors rows 0-1, positives rows
      2-3: scores[i][j] = 20 * cos(pooled[i], pooled[2+j]), cross-entropy with labels
      [0, 1], mean over the anchors) and grads (d loss / d every LoRA tensor, keyed as
      in adapter_model.safetensors, flattened row-major). Computed in float32; written
      to 8 significant digits.

It also writes crates/sembase-train/tests/fixtures/tiny-llama/: llama_tiny's config.json
and model.safetensors with a word-level tokenizer.json (pad id 0, no special tokens
added), a decoder model directory that sembase's LoRA training tests train end to end.

How attention is set (transformers 5.x): every case passes an explicit 4D float mask of
shape (batch, 1, seq, seq), 0 where a query may attend a key and the dtype's minimum
elsewhere; transformers' create_causal_mask returns a 4D mask unchanged and eager
attention adds it to the scores. Two asserts guard it: the 4D mask built causal
reproduces the plain 2D-mask causal output (1e-5), and the bidirectional output differs
from the causal one.

Regenerate from the repository root with .venv-bench (torch, transformers, safetensors,
peft; see bench/requirements.txt):
  make bench-env    # once: .venv-bench with bench/requirements.txt
  .venv-bench/bin/python tools/make_lora_fixtures.py
"""
import argparse
import json
import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASES = os.path.join(ROOT, "crates", "sembase-core", "tests", "decoder")
OUT = os.path.join(ROOT, "crates", "sembase-train", "tests", "fixtures", "lora")
NAMES = ["llama_tiny", "qwen3_tiny"]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
STD_A, STD_B = 0.2, 0.2
LENGTHS = [9, 5, 3, 7]
PAD_ID = 0
SCALE = 20.0
LOSS_RANGE = (0.1, 10.0)
CASES = [("causal", "right", "last"), ("causal", "left", "last"),
         ("bidirectional", "right", "mean"), ("bidirectional", "left", "mean")]


def sig(v, digits=8):
    return float(f"{v:.{digits}g}")


def batch(real_rows, padding):
    """ids and 0/1 mask (rows x width) with the real tokens right- or left-aligned."""
    width = max(len(r) for r in real_rows)
    ids = torch.full((len(real_rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(real_rows), width, dtype=torch.long)
    for i, row in enumerate(real_rows):
        n = len(row)
        sl = slice(0, n) if padding == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(row)
        mask[i, sl] = 1
    return ids, mask


def positions(mask):
    return (mask.cumsum(1) - 1).clamp(min=0)


def mask_4d(mask, attention, dtype=torch.float32):
    """(batch, 1, seq, seq) additive mask: 0 = may attend, dtype min = may not."""
    seq = mask.shape[1]
    allowed = mask.bool()[:, None, None, :].expand(-1, 1, seq, seq)
    if attention == "causal":
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()[None, None]
    elif attention != "bidirectional":
        raise ValueError(attention)
    out = torch.zeros(allowed.shape, dtype=dtype)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)


def hidden(model, ids, mask, attention):
    return model(input_ids=ids, attention_mask=mask_4d(mask, attention), position_ids=positions(mask),
                 use_cache=False).last_hidden_state


def pool(states, mask, pooling):
    if pooling == "last":
        # Index of the last real token: right padding -> length-1, left padding -> width-1.
        width = mask.shape[1]
        last = width - 1 - mask.flip(1).argmax(1)
        return states[torch.arange(len(mask)), last]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1)
    raise ValueError(pooling)


def in_batch_loss(pooled):
    a = torch.nn.functional.normalize(pooled[:2], dim=1)
    p = torch.nn.functional.normalize(pooled[2:4], dim=1)
    scores = SCALE * a @ p.T
    return torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1]))


def run_case(model, rows, attention, padding, pooling):
    ids, mask = batch(rows, padding)
    pooled = pool(hidden(model, ids, mask, attention), mask, pooling)
    return ids, mask, pooled, in_batch_loss(pooled)


def saved_key(param_name):
    # PEFT names the live parameter ...lora_A.default.weight and saves it as ...lora_A.weight.
    return param_name.replace(".default.", ".")


def check_masks(model, real_rows):
    """The 4D-mask technique really does what it claims in this transformers version."""
    for padding in ("right", "left"):
        ids, mask = batch(real_rows, padding)
        real = mask.bool()
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                          use_cache=False).last_hidden_state
            causal = hidden(model, ids, mask, "causal")
            bidir = hidden(model, ids, mask, "bidirectional")
        diff = (plain - causal)[real].abs().max().item()
        assert diff < 1e-5, f"{padding}: 4D causal mask differs from the 2D-mask causal output by {diff}"
        per_token = (bidir - causal).abs().amax(-1)[real]
        moved = per_token.max().item()
        assert moved > 1e-2, f"{padding}: bidirectional output equals the causal one (max diff {moved})"
        print(f"  mask check ({padding} padding): 4D causal vs 2D causal max diff {diff:.2e}, "
              f"bidirectional vs causal max diff {moved:.3f}, "
              f"real tokens changed {int((per_token > 1e-6).sum())}/{int(real.sum())}")


def make(name, seed):
    base_dir = os.path.join(BASES, name)
    out_dir = os.path.join(OUT, name)
    torch.manual_seed(seed)
    base = AutoModel.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    cfg = base.config
    peft_model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=TARGETS, bias="none"))
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    with torch.no_grad():
        for pname, p in sorted(peft_model.named_parameters()):
            if ".lora_A." in pname or ".lora_B." in pname:
                std = STD_A if ".lora_A." in pname else STD_B
                p.copy_(torch.randn(p.shape, generator=gen) * std)
                lora[saved_key(pname)] = p
    peft_model.eval()
    assert all(m.p == 0.0 for m in peft_model.modules() if isinstance(m, torch.nn.Dropout)), "dropout left on"
    trainable = {saved_key(n) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora), "trainable parameters are not exactly the LoRA tensors"

    os.makedirs(out_dir, exist_ok=True)
    peft_model.save_pretrained(out_dir)
    # save_pretrained also writes a model card template; the fixture does not need it.
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    cp = os.path.join(out_dir, "adapter_config.json")
    with open(cp) as f:
        adapter_cfg = json.load(f)
    adapter_cfg["base_model_name_or_path"] = f"../../../../../sembase-core/tests/decoder/{name}"
    # PEFT writes target_modules from a set, in an order that changes from run to run.
    adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])
    with open(cp, "w") as f:
        json.dump(adapter_cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    assert os.path.isdir(os.path.normpath(os.path.join(out_dir, adapter_cfg["base_model_name_or_path"])))
    with safe_open(os.path.join(out_dir, "adapter_model.safetensors"), "pt") as f:
        saved = set(f.keys())
        for k in saved:
            assert torch.equal(f.get_tensor(k), lora[k].detach()), k
    assert saved == set(lora), f"saved keys differ: {sorted(saved ^ set(lora))[:4]}"

    model = peft_model  # forward(input_ids=..., attention_mask=..., position_ids=...) reaches LlamaModel / Qwen3Model
    # The same real tokens in every case, redrawn (deterministically) until no case's loss is
    # near 0 (nor huge), so that the gradients the test compares are not vanishingly small.
    for draw in range(1, 101):
        rows = [torch.randint(3, cfg.vocab_size, (n,), generator=gen).tolist() for n in LENGTHS]
        with torch.no_grad():
            losses = [run_case(model, rows, *case)[3].item() for case in CASES]
        if all(LOSS_RANGE[0] <= x <= LOSS_RANGE[1] for x in losses):
            break
    else:
        raise SystemExit(f"{name}: no id draw with every loss in {LOSS_RANGE}")
    print(f"  ids: draw {draw} (losses {', '.join(f'{x:.3f}' for x in losses)})")
    check_masks(model, rows)

    cases = []
    for attention, padding, pooling in CASES:
        model.zero_grad(set_to_none=True)
        ids, mask, pooled, loss = run_case(model, rows, attention, padding, pooling)
        loss.backward()
        grads = {k: lora[k].grad.detach().flatten().tolist() for k in sorted(lora)}
        cases.append({
            "attention": attention, "padding": padding, "pooling": pooling,
            "ids": ids.tolist(), "mask": mask.tolist(),
            "pooled": [[sig(v) for v in row] for row in pooled.detach().double().tolist()],
            "loss": sig(loss.item()),
            "grads": {k: [sig(v) for v in g] for k, g in grads.items()},
            "_raw": (pooled.detach(), loss.detach(), grads),
        })
        print(f"  {name} {attention:13s} {padding:5s} {pooling:4s} loss {loss.item():.8f}")

    # Right and left padding of the same rows must agree.
    for i in (0, 2):
        (pa, la, ga), (pb, lb, gb) = cases[i]["_raw"], cases[i + 1]["_raw"]
        assert (pa - pb).abs().max() < 1e-5 and abs(la - lb) < 1e-5, f"{name}: right/left padding disagree"
        gmax = max(max(abs(x - y) for x, y in zip(ga[k], gb[k])) for k in ga)
        assert gmax < 1e-4, f"{name}: right/left gradients differ by {gmax}"
    for c in cases:
        del c["_raw"]

    expected = {
        "reference": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
                     f"peft {__import__('peft').__version__}",
        "base": adapter_cfg["base_model_name_or_path"],
        "rank": RANK, "alpha": ALPHA, "scale": SCALE, "pad_id": PAD_ID, "lengths": LENGTHS,
        "anchors": [0, 1], "positives": [2, 3],
        "cases": cases,
    }
    path = os.path.join(out_dir, "expected.json")
    with open(path, "w") as f:
        json.dump(expected, f)
    n = sum(p.numel() for p in lora.values())
    print(f"wrote {out_dir} ({len(lora)} LoRA tensors, {n} values, expected.json {os.path.getsize(path)} bytes)")


TINY_MODEL = os.path.join(ROOT, "crates", "sembase-train", "tests", "fixtures", "tiny-llama")
WORDS = ("the cat sat on a mat big dog ran far away bird flew over tree sky is blue small red "
         "home sun was green slow fast").split()


def make_tiny_model_dir():
    """llama_tiny with a word-level tokenizer, as a model directory to train."""
    os.makedirs(TINY_MODEL, exist_ok=True)
    for name in ["config.json", "model.safetensors"]:
        shutil.copyfile(os.path.join(BASES, "llama_tiny", name), os.path.join(TINY_MODEL, name))
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(WORDS)})
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    with open(os.path.join(TINY_MODEL, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f, indent=1)
    print(f"wrote {TINY_MODEL}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=NAMES, help="make one fixture only")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions, and small enough to be quick
    make_tiny_model_dir()
    for seed, name in enumerate(NAMES):
        if args.only in (None, name):
            make(name, 700 + seed)


if __name__ == "__main__":
    main()
