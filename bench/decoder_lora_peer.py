#!/usr/bin/env python3
"""PyTorch peer of `sembase train triplets --model smollm2-135m --lora 16 ...`.

Trains SmolLM2-135M into a sentence-embedding model with a PEFT LoRA adapter in
sentence-transformers on the CPU, and reports quality, speed and memory:

  model      sentence-transformers Transformer (the HF directory) + Pooling (lasttoken
             or mean) + Normalize; right padding, the tokenizer's own pipeline only
             (nothing appended: no EOS, no BOS; SmolLM2's tokenizer has no
             post-processor), pad token = EOS when the tokenizer has none;
             truncation at --max-length.
  adapter    LoRA (peft) of rank --lora-rank, alpha --lora-alpha, dropout
             --lora-dropout on q/k/v/o/gate/up/down_proj, added with
             SentenceTransformer.add_adapter; every other weight frozen.
  attention  causal (the model's own mask), or with --bidirectional none: every token
             attends to every real token of its text. That is done by handing the model
             an explicit 4D float mask (batch, 1, seq, seq) of 0 / dtype-min, which
             transformers 5 uses as-is (the technique that tools/make_lora_fixtures.py
             verifies; a quick check here repeats it on SmolLM2 before training).
  loss       sentence-transformers' MultipleNegativesRankingLoss on (anchor, positive,
             negative): each anchor against all positives and all negatives of the
             batch, scale --scale (= 1 / temperature), cosine similarity.
  loop       a plain loop (not the ST Trainer): each epoch a seeded shuffle (seed + epoch)
             cut into batches of --batch-size triplets in which no text repeats (as
             sentence-transformers' NO_DUPLICATES sampler and sembase do; the epoch's
             last batch may be smaller); the anchor, positive and negative columns are
             embedded in separate forward passes; AdamW (weight decay 0.01) on the LoRA
             parameters only; linear warm-up over round(steps * --warmup-ratio) steps
             from 0, then linear decay to 0 at --steps; gradient-norm clip 1.0. A step's
             wall time covers tokenisation, forward, backward, clipping and the update.
  eval       Spearman x100 of cosine similarity against the gold score on STS-B test
             and SICK-R test, before and after training, embedding batch 32 (texts sorted
             by length, each text embedded once), eval mode.

Printed (and written as one JSON object with --json): torch version, threads, CPU model,
before/after Spearman of both sets, median and mean seconds per step, peak RSS
(ru_maxrss, MiB; also as it stood once the model was loaded) and the trainable parameter
count. The JSON adds every step's time and loss.

The model directory (--hf-model) is SmolLM2-135M-Instruct in Hugging Face layout,
dequantised from the GGUF that sembase uses (`target/release/sembase model pull
smollm2-135m`), so both sides start from the same weights:
  .venv-bench/bin/python ../shared/tools/reference/gguf_llama_to_hf.py \\
      "${SEMBASE_HOME:-$HOME/.cache/sembase}/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" \\
      /tmp/smollm2-hf
(config.json + model.safetensors in f32 + tokenizer.json; about 0.5 GB, ~1 minute.)

Run from the repository root with .venv-bench (needs peft, see bench/requirements.txt):
  .venv-bench/bin/python bench/decoder_lora_peer.py --hf-model /tmp/smollm2-hf \\
      --threads 8 --json bench/out/decoder_lora_peer.json [--bidirectional --pooling mean]
  # smoke test: --steps 3 --eval-limit 64
"""
import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EVAL_SETS = {"stsb": DATA / "en" / "stsb" / "test.tsv", "sickr": DATA / "en" / "sickr" / "test.tsv"}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def read_tsv(path, columns, limit=None):
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= columns:
                rows.append(parts[:columns])
            if limit is not None and len(rows) >= limit:
                break
    return header, rows


def build_model(hf_dir, pooling, max_length, args):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(hf_dir, max_seq_length=max_length,
                              model_kwargs={"dtype": torch.float32, "attn_implementation": args.attn})
    tok = transformer.tokenizer
    tok.padding_side = "right"
    if tok.pad_token is None:
        eos_id = transformer.auto_model.config.eos_token_id
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(eos_id)
    pool = Pooling(transformer.get_embedding_dimension(), pooling_mode={"last": "lasttoken", "mean": "mean"}[pooling])
    return SentenceTransformer(modules=[transformer, pool, Normalize()], device="cpu")


def mask_4d(mask, bidirectional, dtype):
    """(batch, 1, seq, seq) additive mask: 0 where a query may attend a key, dtype min elsewhere."""
    seq = mask.shape[1]
    allowed = mask.bool()[:, None, None, :].expand(-1, 1, seq, seq)
    if not bidirectional:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool, device=mask.device).tril()[None, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


def embed(model, texts, bidirectional, explicit_mask=None):
    """Sentence embeddings through the ST modules; a 4D mask is given to the model when asked."""
    features = model.preprocess(texts)
    if not bidirectional and explicit_mask is None:
        return model(features)["sentence_embedding"]
    explicit = bidirectional if explicit_mask is None else explicit_mask == "bidirectional"
    m4 = mask_4d(features["attention_mask"], explicit, torch.float32)
    # kwargs override the features for the model call only: pooling still reads the 2D mask.
    features = model[0](features, attention_mask=m4)
    for module in list(model)[1:]:
        features = module(features)
    return features["sentence_embedding"]


def check_bidirectional(model):
    """The 4D mask reproduces the model's own causal output, and the bidirectional one differs."""
    texts = ["A man is playing a guitar on the stage.", "Two dogs run."]
    with torch.no_grad():
        plain = embed(model, texts, False)
        causal = embed(model, texts, False, explicit_mask="causal")
        bidir = embed(model, texts, True)
    same = (plain - causal).abs().max().item()
    moved = (bidir - causal).abs().max().item()
    assert same < 1e-4, f"4D causal mask does not reproduce the causal output (max diff {same})"
    assert moved > 1e-3, f"bidirectional output equals the causal one (max diff {moved})"
    print(f"bidirectional check: 4D causal vs plain {same:.1e}, bidirectional vs causal {moved:.3f}")


def evaluate(model, bidirectional, limit, batch_size=32):
    model.eval()
    out = {}
    for name, path in EVAL_SETS.items():
        _, rows = read_tsv(path, 3, limit)
        texts = sorted({t for r in rows for t in r[:2]}, key=lambda t: (len(t), t))
        vecs = {}
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                chunk = texts[i:i + batch_size]
                for t, v in zip(chunk, embed(model, chunk, bidirectional)):
                    vecs[t] = v
        cos = [float(torch.dot(vecs[a], vecs[b])) for a, b, _ in rows]  # unit vectors
        gold = [float(s) for _, _, s in rows]
        out[name] = round(100 * spearmanr(cos, gold).statistic, 2)
    return out


def distinct_batches(rows, size, seed):
    """One epoch: seeded shuffle, greedily packed so that no text repeats within a batch."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    batches = []
    while order:
        batch, seen, deferred = [], set(), []
        for i in order:
            if len(batch) < size and not any(t in seen for t in rows[i]):
                seen.update(rows[i])
                batch.append(i)
            else:
                deferred.append(i)
        batches.append(batch)
        order = deferred
    return batches


def batch_stream(rows, size, seed):
    epoch = 0
    while True:
        for b in distinct_batches(rows, size, seed + epoch):
            yield b
        epoch += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-model", required=True, help="SmolLM2-135M in Hugging Face layout (see above)")
    ap.add_argument("--data", default=str(DATA / "en" / "snli-triplets" / "train.tsv"),
                    help="triplets TSV with header anchor, positive, negative")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--scale", type=float, default=20.0, help="MNRL scale = 1 / temperature")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--pooling", choices=["last", "mean"], default="last")
    ap.add_argument("--bidirectional", action="store_true", help="no causal mask")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--eval-limit", type=int, help="evaluate on the first N pairs of each set (default all)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers attention kernel")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    from peft import LoraConfig

    header, triplets = read_tsv(args.data, 3)
    if header[:3] != ["anchor", "positive", "negative"]:
        ap.error(f"{args.data}: header {header[:3]}, expected anchor, positive, negative")
    model = build_model(args.hf_model, args.pooling, args.max_length, args)
    model.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                 target_modules=TARGETS, bias="none"))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_model()}")
    print(f"model {args.hf_model}: {total} parameters, {trainable} trainable (LoRA r{args.lora_rank} "
          f"alpha {args.lora_alpha:g}), pooling {args.pooling}, "
          f"{'bidirectional' if args.bidirectional else 'causal'} attention, {args.attn}")
    rss_loaded = peak_rss_mib()
    model.eval()
    if args.bidirectional:
        check_bidirectional(model)

    t0 = time.perf_counter()
    before = evaluate(model, args.bidirectional, args.eval_limit)
    eval_s = time.perf_counter() - t0
    print(f"before: STS-B {before['stsb']:.2f}  SICK-R {before['sickr']:.2f}  ({eval_s:.1f} s)")

    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    loss_fn = MultipleNegativesRankingLoss(model, scale=args.scale)
    optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = math.floor(args.steps * args.warmup_ratio + 0.5)

    def lr_factor(step):  # step counts from 0, as in transformers' linear schedule
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (args.steps - step) / max(1, args.steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    stream = batch_stream(triplets, args.batch_size, args.seed)
    step_s, losses = [], []
    model.train()
    for step in range(args.steps):
        rows = [triplets[i] for i in next(stream)]
        t = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        columns = [[r[c] for r in rows] for c in range(3)]
        reps = [embed(model, texts, args.bidirectional) for texts in columns]
        loss = loss_fn.compute_loss_from_embeddings(reps, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = optim.param_groups[0]["lr"]
        optim.step()
        sched.step()
        step_s.append(time.perf_counter() - t)
        losses.append(loss.item())
        if step < 3 or (step + 1) % 10 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}  loss {losses[-1]:.4f}  lr {lr:.2e}  "
                  f"{step_s[-1]:.2f} s", flush=True)

    model.eval()
    t0 = time.perf_counter()
    after = evaluate(model, args.bidirectional, args.eval_limit)
    eval_s = time.perf_counter() - t0
    print(f"after:  STS-B {after['stsb']:.2f}  SICK-R {after['sickr']:.2f}  ({eval_s:.1f} s)")
    median, mean = statistics.median(step_s), statistics.fmean(step_s)
    rss = peak_rss_mib()
    print(f"seconds per step: median {median:.3f}, mean {mean:.3f} ({len(step_s)} steps)")
    print(f"peak RSS {rss:.0f} MiB (after loading the model: {rss_loaded:.0f} MiB); trainable parameters {trainable}")

    if args.json:
        result = {
            "peer": "pytorch-peft-sentence-transformers",
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "sentence_transformers": __import__("sentence_transformers").__version__,
            "peft": __import__("peft").__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "model": args.hf_model, "data": args.data, "steps": args.steps, "batch_size": args.batch_size,
            "lr": args.lr, "warmup_steps": warmup, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
            "lora_dropout": args.lora_dropout, "scale": args.scale, "max_length": args.max_length,
            "pooling": args.pooling, "bidirectional": args.bidirectional, "attn": args.attn, "seed": args.seed,
            "eval_limit": args.eval_limit,
            "before": before, "after": after,
            "seconds_per_step_median": round(median, 4), "seconds_per_step_mean": round(mean, 4),
            "step_seconds": [round(s, 4) for s in step_s], "losses": [round(x, 5) for x in losses],
            "peak_rss_mib": round(rss, 1), "peak_rss_after_load_mib": round(rss_loaded, 1),
            "trainable_parameters": trainable, "total_parameters": total,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
