#!/usr/bin/env python3
"""Fine-tunes a model directory on a text<TAB>label classification set (cross-entropy).

  .venv/bin/python training/finetune.py --model <pre-trained dir> --out <teacher dir> \
      --work training/.cache/runs/ft --epochs 1
Resumes from <work>/ckpt.pt. Logs loss and dev accuracy to <work>/log.jsonl.
"""
import argparse
import os
import random
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--train", default=os.path.join(data.DATA, "sst2", "train.tsv"))
    ap.add_argument("--dev", default=os.path.join(data.DATA, "sst2", "dev.tsv"))
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.06)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--ckpt-every", type=int, default=200)
    args = ap.parse_args(argv)

    common.setup_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    model, _ = common.load_model(args.model)
    tok = data.Tokenizer(os.path.join(args.model, "vocab.txt"))
    train = data.load_classification(args.train, tok, args.max_len)
    dev = data.load_classification(args.dev, tok, max(args.max_len, model.config.max_position_embeddings))
    lengths = [len(s) for s, _ in train]
    per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total = int(args.epochs * per_epoch)
    opt = torch.optim.AdamW(common.param_groups(model, args.lr), lr=args.lr)
    warm = int(args.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: common.linear_schedule(s, total, warm))
    step, epoch, pos = 0, 0, 0
    ckpt = os.path.join(args.work, "ckpt.pt")
    if os.path.exists(ckpt):
        st = torch.load(ckpt)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        torch.set_rng_state(st["rng"])
        step, epoch, pos = st["step"], st["epoch"], st["pos"]
        print(f"resumed at step {step}", file=sys.stderr)
    log = common.JsonlLog(os.path.join(args.work, "log.jsonl"))
    batches = data.bucketed_batches(lengths, args.batch_size, random.Random(args.seed + epoch))
    prog = common.Progress(total, "finetune", start=step)
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    model.train()
    while step < total:
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
            batches = data.bucketed_batches(lengths, args.batch_size, random.Random(args.seed + epoch))
        ex = [train[i] for i in batches[pos]]
        pos += 1
        ids, presence = data.pad_batch([s for s, _ in ex], tok.pad_id)
        y = torch.tensor([l for _, l in ex])
        logits, _, _ = model(ids, presence)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        run_loss += loss.item()
        run_acc += (logits.argmax(-1) == y).float().mean().item()
        run_n += 1
        prog.update(1, loss=run_loss / run_n)
        if step % 50 == 0:
            log.write(step=step, epoch=epoch, loss=run_loss / run_n, train_acc=run_acc / run_n,
                      lr=sched.get_last_lr()[0])
            run_loss, run_acc, run_n = 0.0, 0.0, 0
        if step % args.eval_every == 0 or step == total:
            res = evaluate.evaluate(model, dev)
            model.train()
            log.write(step=step, epoch=epoch, dev_acc=res["accuracy"])
            print(f"step {step}: dev accuracy {res['accuracy']:.4f}", file=sys.stderr)
        if step % args.ckpt_every == 0 or step == total:
            common.atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(),
                                      "sched": sched.state_dict(), "rng": torch.get_rng_state(),
                                      "step": step, "epoch": epoch, "pos": pos}, ckpt)
    common.save_model(model, args.out, os.path.join(args.model, "vocab.txt"))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
