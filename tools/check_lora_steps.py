#!/usr/bin/env python3
"""A few LoRA training steps of a real decoder in sembase and in PyTorch + PEFT, from the
same starting adapter on the same batch, compared loss by loss and weight by weight.

The parity test (crates/sembase-train/tests/lora_parity.rs) checks one forward and
backward pass on tiny random decoders; this checks the whole training step (the CLI's
tokenisation, batching, pooling, MNRL loss, clipping and AdamW) at real size, where the
kernels take other paths. Without dropout and with one batch that holds every row, the
two runs differ only by float rounding, so their losses and adapters must stay close.

  .venv-bench/bin/python tools/check_lora_steps.py --hf-model bench/out/smollm2-hf \\
      [--bidirectional --pooling mean] [--steps 3] [--rows 8]

Steps: (1) the first --rows triplets of --data with no text repeated become one batch;
(2) `sembase train triplets --max-steps 0` on --hf-model writes sembase's initial adapter
(A seeded, B zero), and `--max-steps N --epochs N` trains N steps on that one batch
(dropout 0, warm-up 0, so the learning rate falls linearly from --lr to 0 at step N);
(3) PEFT + sentence-transformers (bench/decoder_lora_peer.py's model and mask) loads that
initial adapter and runs the same N steps: MultipleNegativesRankingLoss (scale 20),
gradient-norm clip 1.0, AdamW (weight decay 0.01). Printed: each step's loss on both
sides and, per adapter tensor, how far sembase's update (final minus initial) lies from
PEFT's, as the L2 norm of the difference over the norm of PEFT's update (Adam divides
each gradient by its own magnitude, so an entry whose gradient is float noise moves by
+-lr on either side: the norm, not the largest entry, is the fair measure).
Exits 1 when a loss differs by more than 1e-3 or the median update by more than 1%.
"""
import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "en" / "snli-triplets" / "train.tsv"


def peer_module():
    spec = importlib.util.spec_from_file_location("peer", ROOT / "bench" / "decoder_lora_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distinct_rows(path, count):
    rows, seen = [], set()
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        for line in f:
            texts = line.rstrip("\n").split("\t")[:3]
            if len(texts) == 3 and not seen.intersection(texts):
                seen.update(texts)
                rows.append(texts)
            if len(rows) == count:
                return header, rows
    raise SystemExit(f"{path}: fewer than {count} rows without repeated texts")


def sembase_train(args, data, output, steps):
    flags = ["--lora", "16", "--lora-alpha", "32", "--lora-dropout", "0", "--batch-size", str(args.rows),
             "--lr", str(args.lr), "--warmup-ratio", "0", "--temperature", "0.05", "--max-length", "64",
             "--seed", "42", "--threads", str(args.threads), "--pooling", args.pooling]
    if args.bidirectional:
        flags.append("--bidirectional")
    command = [args.binary, "train", "triplets", "--model", args.hf_model, "--data", str(data),
               "--output", str(output), "--max-steps", str(steps), "--epochs", str(max(steps, 1)),
               "--json", f"{output}.json"] + flags
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(Path(f"{output}.json").read_text())


def peer_train(args, rows, initial):
    peer = peer_module()
    from peft import LoraConfig
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(args.threads)
    model = peer.build_model(args.hf_model, args.pooling, 64, argparse.Namespace(attn="eager"))
    model.add_adapter(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=peer.TARGETS, bias="none"))
    params = {}
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if p.requires_grad:
            params[name.replace(".default", "")] = p
    start = load_file(str(initial / "adapter_model.safetensors"))
    with torch.no_grad():
        for saved, value in start.items():
            matches = [n for n in params if n.endswith(saved.removeprefix("base_model.model."))]
            assert len(matches) == 1, f"{saved}: {matches}"
            params[matches[0]].copy_(value)
    assert len(start) == len(params), f"{len(start)} saved tensors, {len(params)} LoRA parameters"
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)
    optim = torch.optim.AdamW(list(params.values()), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: max(0.0, (args.steps - step) / args.steps))
    model.train()
    losses = []
    for _ in range(args.steps):
        optim.zero_grad(set_to_none=True)
        reps = [peer.embed(model, [r[c] for r in rows], args.bidirectional) for c in range(3)]
        loss = loss_fn.compute_loss_from_embeddings(reps, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
    return losses, {n: p.detach() for n, p in params.items()}, start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-model", required=True, help="a decoder in Hugging Face layout (f32 safetensors)")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "sembase"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pooling", choices=["last", "mean"], default="last")
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sembase-lora-steps-"))
    header, rows = distinct_rows(args.data, args.rows)
    data = work / "batch.tsv"
    data.write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    sembase_train(args, data, work / "initial", 0)
    ours = sembase_train(args, data, work / "trained", args.steps)
    our_losses = [loss for _, loss in ours["loss"]]
    peer_losses, peer_final, start = peer_train(args, rows, work / "initial")

    attention = "bidirectional" if args.bidirectional else "causal"
    print(f"{args.hf_model}, {attention}, {args.pooling} pooling, {args.rows} triplets, {args.steps} steps")
    worst_loss = 0.0
    for step, (a, b) in enumerate(zip(our_losses, peer_losses), 1):
        worst_loss = max(worst_loss, abs(a - b))
        print(f"  step {step}: loss sembase {a:.6f}  PEFT {b:.6f}  gap {abs(a - b):.2e}")
    trained = load_file(str(work / "trained" / "adapter_model.safetensors"))
    gaps = []
    for saved, value in trained.items():
        suffix = saved.removeprefix("base_model.model.")
        peer_value = next(v for n, v in peer_final.items() if n.endswith(suffix))
        update = (peer_value - start[saved]).norm().item()
        gaps.append(((value - peer_value).norm().item() / max(update, 1e-12), saved))
    gaps.sort()
    worst, median = gaps[-1], gaps[len(gaps) // 2][0]
    for gap, name in gaps[-6:]:
        print(f"    {gap:.2e} {name}")
    print(f"  updates after {args.steps} steps, |ours - PEFT's| / |PEFT's| over {len(gaps)} tensors: "
          f"median {median:.2e}, largest {worst[0]:.2e} ({worst[1]})")
    ok = worst_loss <= 1e-3 and median <= 0.01 and len(our_losses) == args.steps and not math.isnan(worst[0])
    print("parity holds" if ok else "PARITY FAILS")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
