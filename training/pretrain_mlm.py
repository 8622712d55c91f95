#!/usr/bin/env python3
"""Masked-language-model pre-training of a small BERT from scratch (random init).

Example (the demo recipe):
  .venv/bin/python training/pretrain_mlm.py --work training/.cache/runs/mlm --out <model dir> \
      --layers 4 --hidden 256 --heads 4 --ffn 1024 --steps 1500
Writes a model directory (BertForSequenceClassification layout, pooler/classifier untrained) that
fine-tuning starts from. Resumes from <work>/ckpt.pt when present.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import data  # noqa: E402
from modeling import Bert, BertConfig  # noqa: E402


def mask_tokens(ids, presence, tok, vocab_size, prob, gen):
    """BERT dynamic masking: prob of the non-special tokens; 80% [MASK], 10% random, 10% kept."""
    special = (ids == tok.cls_id) | (ids == tok.sep_id) | (presence == 0)
    sel = (torch.rand(ids.shape, generator=gen) < prob) & ~special
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    ids = ids.clone()
    ids[sel & (r < 0.8)] = tok.mask_id
    rnd = sel & (r >= 0.8) & (r < 0.9)
    ids[rnd] = torch.randint(999, vocab_size, (int(rnd.sum()),), generator=gen)  # skip [unused]
    return ids, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="checkpoint/log directory")
    ap.add_argument("--out", required=True, help="output model directory")
    ap.add_argument("--vocab", default=os.path.join(data.DATA, "bert-base-uncased", "vocab.txt"))
    ap.add_argument("--sst2-train", default=os.path.join(data.DATA, "sst2", "train.tsv"))
    ap.add_argument("--squad", default=os.path.join(data.DATA, "squad", "dev-v1.1.json"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--max-pos", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--schedule-steps", type=int, default=None,
                    help="length of the LR schedule (default --steps); stopping early keeps its shape")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=float, default=0.06)
    ap.add_argument("--mask-prob", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=100)
    args = ap.parse_args(argv)

    common.setup_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    tok = data.Tokenizer(args.vocab)
    seqs = data.load_mlm_corpus(tok, args.sst2_train, args.squad, args.seq_len)
    vocab_size = len(tok.vocab)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=args.ffn,
                     max_position_embeddings=args.max_pos, pad_token_id=tok.pad_id)
    model = Bert(cfg, mlm_head=True)
    opt = torch.optim.AdamW(common.param_groups(model, args.lr), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    horizon = args.schedule_steps or args.steps
    warm = int(args.warmup * horizon)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: common.linear_schedule(s, horizon, warm))
    gen = torch.Generator().manual_seed(args.seed)
    step, epoch, pos = 0, 0, 0
    ckpt = os.path.join(args.work, "ckpt.pt")
    if os.path.exists(ckpt):
        st = torch.load(ckpt)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        step, epoch, pos = st["step"], st["epoch"], st["pos"]
        print(f"resumed at step {step}", file=sys.stderr)
    log = common.JsonlLog(os.path.join(args.work, "log.jsonl"))
    lengths = [len(s) for s in seqs]
    batches = data.bucketed_batches(lengths, args.batch_size, random.Random(args.seed + epoch))
    prog = common.Progress(args.steps, "mlm", start=step)
    model.train()
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    while step < args.steps:
        if pos >= len(batches):
            epoch += 1
            pos = 0
            batches = data.bucketed_batches(lengths, args.batch_size, random.Random(args.seed + epoch))
        ids, presence = data.pad_batch([seqs[i] for i in batches[pos]], tok.pad_id)
        pos += 1
        inp, labels = mask_tokens(ids, presence, tok, vocab_size, args.mask_prob, gen)
        hidden, _, _ = model.encode(inp, presence)
        sel = labels >= 0
        logits = model.mlm_logits(hidden[sel])
        loss = F.cross_entropy(logits, labels[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        run_loss += loss.item()
        run_acc += (logits.argmax(-1) == labels[sel]).float().mean().item()
        run_n += 1
        prog.update(1, loss=run_loss / run_n, epoch=epoch)
        if step % 20 == 0 or step == args.steps:
            log.write(step=step, epoch=epoch, mlm_loss=run_loss / run_n, mlm_acc=run_acc / run_n,
                      lr=sched.get_last_lr()[0])
            run_loss, run_acc, run_n = 0.0, 0.0, 0
        if step % args.ckpt_every == 0 or step == args.steps:
            common.atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(),
                                      "sched": sched.state_dict(), "gen": gen.get_state(),
                                      "step": step, "epoch": epoch, "pos": pos}, ckpt)
    common.save_model(model, args.out, args.vocab)
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("mlm.")},
               os.path.join(args.work, "mlm_head.pt"))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
