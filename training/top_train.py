#!/usr/bin/env python3
"""ToP training: ranking-distilled, constraint-aware token pruning (Li et al. 2023), and its ablation
without ranking distillation.

  .venv/bin/python training/top_train.py --teacher <fine-tuned model dir> --work <run dir> \
      --out <model dir> --targets 0.5,0.25,0.125 --default-target 0.25 --steps 3000

Teacher: the unpruned fine-tuned model (frozen). Student: a copy with token gates. Per step:
  * the student runs with this step's hard-concrete gate samples (coarse per layer, fine per
    rank-percentile bin); tokens are ranked by the student's own attention received, [CLS] kept;
  * loss = KL(teacher || student) at temperature T (x T^2)
         + alpha * max(0.01, 1 - progress) * LambdaLoss(student early-layer importance vs the
           teacher's last-layer importance ranking)          (method top; 0 for gates-no-ranking)
         + lambda1 (s - t) + lambda2 (s - t)^2
    s = expected real-length FLOPs fraction (training/cost.py, P(gate > 0) keep fractions, over the
    length distribution of the calibration sentences), t = the target, warmed up linearly from 1.0;
    lambda1, lambda2 are trained by gradient ascent.
Several targets may share one student (--targets a,b,c): each has its own gates and multipliers,
steps cycle through them, so one set of weights serves every exported schedule (what the server
does with per-request budgets).

Export: the student as a model directory (fp16 by default) with one schedule per target under
schedules/ and the default one as pruning.yaml. Keep ratios = the gates' expected keep fractions,
then scaled (one multiplier on the pruned fractions, by bisection) so that the real FLOPs with the
engine's ceil rounding over the calibration sentences equal the target.

Resumable: <work>/ckpt.pt is written every --ckpt-every steps; rerunning the same command resumes.
Log: <work>/log.jsonl (loss terms, expected FLOPs, multipliers, dev accuracy and FLOPs).
"""
import argparse
import copy
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import cost  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import ranking  # noqa: E402
import schedule as schedule_mod  # noqa: E402
from gates import TokenGates  # noqa: E402


def kd_loss(student_logits, teacher_logits, T):
    return F.kl_div(F.log_softmax(student_logits / T, -1), F.softmax(teacher_logits / T, -1),
                    reduction="batchmean") * T * T


def expected_flops_fraction(keep, lengths, counts, d, f, placement, num_labels):
    """Expected real-length FLOPs fraction for per-layer expected keep fractions `keep` ([L] tensor):
    tokens after layer l = max(1, tokens entering * keep_l) ([CLS] always stays), cost from
    cost.encoder_macs, summed over the length histogram (lengths, counts tensors)."""
    L = keep.shape[0]
    kept, tokens = [], lengths
    for l in range(L):
        tokens = torch.clamp(tokens * keep[l], min=1.0)
        kept.append(tokens)
    used = cost.encoder_macs(lengths, kept, d, f, placement, num_labels, layers=L)
    full = cost.unpruned_macs(lengths, d, f, L, num_labels)
    return (used * counts).sum() / (full * counts).sum()


def target_at(step, warm_steps, target):
    if warm_steps <= 0:
        return target
    return 1.0 - (1.0 - target) * min(1.0, step / warm_steps)


def file_md5(path):
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def teacher_outputs(teacher, examples, batch_size=128):
    """Teacher logits and last-layer token importance (eval mode) for every example."""
    teacher.eval()
    logits = np.zeros((len(examples), teacher.config.num_labels), dtype=np.float32)
    imps = [None] * len(examples)
    lengths = [len(s) for s, _ in examples]
    for idx in data.sorted_batches(lengths, batch_size):
        ids, presence = data.pad_batch([examples[i][0] for i in idx])
        lg, imp, _ = teacher(ids, presence, need_importance=True)
        last = imp[-1]
        for b, i in enumerate(idx):
            logits[i] = lg[b].numpy()
            imps[i] = last[b, :lengths[i]].numpy().astype(np.float32)
    return logits, imps


def select_examples(train, min_tokens):
    return [i for i, (s, _) in enumerate(train) if len(s) >= min_tokens]


def calibration_lengths(tok, train_path, max_len):
    """Token lengths of the full sentences of the training file (SST-2 train holds each sentence and
    its sub-phrases; the full sentences are what dev looks like)."""
    texts, _ = data.read_tsv(train_path)
    sents = data.maximal_sentences(texts)
    return [min(len(tok.pieces(s)) + 2, max_len) for s in sents]


def ratio_name(t):
    r = 1.0 / t
    return f"{r:g}x" if abs(r - round(r)) > 1e-6 else f"{int(round(r))}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="fine-tuned model directory (unpruned)")
    ap.add_argument("--work", required=True, help="checkpoints, log, results")
    ap.add_argument("--out", required=True, help="exported model directory")
    ap.add_argument("--method", default="top", choices=["top", "gates-no-ranking"])
    ap.add_argument("--targets", default="0.25", help="FLOPs fractions, comma-separated")
    ap.add_argument("--default-target", type=float, default=None, help="becomes pruning.yaml")
    ap.add_argument("--placement", default=cost.AFTER_MHA, choices=cost.PLACEMENTS)
    ap.add_argument("--train", default=os.path.join(data.DATA, "sst2", "train.tsv"))
    ap.add_argument("--dev", default=os.path.join(data.DATA, "sst2", "dev.tsv"))
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--min-tokens", type=int, default=12,
                    help="train on examples at least this long (short phrases cannot be pruned)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--gate-lr", type=float, default=0.1)
    ap.add_argument("--lambda-lr", type=float, default=0.1)
    ap.add_argument("--target-warmup", type=float, default=0.4, help="fraction of steps")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.2, help="ranking loss weight")
    ap.add_argument("--rank-layers", default=None, help="default: the first min(3, L-1) layers")
    ap.add_argument("--rank-topk", type=int, default=20)
    ap.add_argument("--prune-layers", default=None, help="default: every layer")
    ap.add_argument("--bins", type=int, default=20)
    ap.add_argument("--init-log-alpha", type=float, default=2.0)
    ap.add_argument("--dtype", default="F16", choices=["F16", "F32", "BF16"])
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prepare-only", action="store_true",
                    help="build the cached teacher outputs and calibration lengths, then exit")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="checkpoint and exit after this many steps (the run resumes later)")
    args = ap.parse_args(argv)

    common.setup_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    targets = [float(x) for x in args.targets.split(",")]
    default_target = args.default_target if args.default_target is not None else targets[0]
    if default_target not in targets:
        raise SystemExit(f"--default-target {default_target} is not one of --targets")

    teacher, _ = common.load_model(args.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    cfg = student.config
    L, d, f, nl = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_labels
    vocab = os.path.join(args.teacher, "vocab.txt")
    tok = data.Tokenizer(vocab)
    train = data.load_classification(args.train, tok, args.max_len)
    dev = data.load_classification(args.dev, tok, max(args.max_len, cfg.max_position_embeddings))
    sel = select_examples(train, args.min_tokens)
    tkey = f"{file_md5(os.path.join(args.teacher, 'model.safetensors'))}:{tok.tag}:{args.train}:{args.max_len}:{args.min_tokens}"
    t_logits, t_imps = data._cached("teacher", tkey, lambda: teacher_outputs(teacher, [train[i] for i in sel]))
    calib = data._cached("calib", f"v2:{file_md5(args.train)}:{tok.tag}:{args.max_len}",
                         lambda: calibration_lengths(tok, args.train, args.max_len))
    hist = np.bincount(np.asarray(calib))
    h_len = torch.tensor(np.nonzero(hist)[0], dtype=torch.float64)
    h_cnt = torch.tensor(hist[np.nonzero(hist)[0]], dtype=torch.float64)
    if args.prepare_only:
        print(f"cached teacher outputs for {len(sel)} examples, {len(calib)} calibration sentences",
              file=sys.stderr)
        return None

    rank_layers = ([int(x) for x in args.rank_layers.split(",")] if args.rank_layers
                   else list(range(min(3, L - 1))))
    prune_layers = [int(x) for x in args.prune_layers.split(",")] if args.prune_layers else None
    alpha = args.alpha if args.method == "top" else 0.0
    gates = torch.nn.ModuleList([TokenGates(L, args.bins, prune_layers, args.init_log_alpha)
                                 for _ in targets])
    lambdas = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2)) for _ in targets])
    opt = torch.optim.AdamW(common.param_groups(student, args.lr), lr=args.lr)
    gate_opt = torch.optim.Adam(gates.parameters(), lr=args.gate_lr)
    lam_opt = torch.optim.Adam(lambdas.parameters(), lr=args.lambda_lr, maximize=True)
    warm = int(0.06 * args.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: common.linear_schedule(s, args.steps, warm))
    gen = torch.Generator().manual_seed(args.seed + 1)
    step, epoch, pos = 0, 0, 0
    ckpt = os.path.join(args.work, "ckpt.pt")
    if os.path.exists(ckpt):
        st = torch.load(ckpt)
        student.load_state_dict(st["student"])
        gates.load_state_dict(st["gates"])
        lambdas.load_state_dict(st["lambdas"])
        opt.load_state_dict(st["opt"])
        gate_opt.load_state_dict(st["gate_opt"])
        lam_opt.load_state_dict(st["lam_opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        step, epoch, pos = st["step"], st["epoch"], st["pos"]
        print(f"resumed at step {step}", file=sys.stderr)
    with open(os.path.join(args.work, "args.json"), "w") as fh:
        json.dump(vars(args), fh, indent=1)
    log = common.JsonlLog(os.path.join(args.work, "log.jsonl"))
    lengths = [len(train[i][0]) for i in sel]
    batches = data.bucketed_batches(lengths, args.batch_size, random.Random(args.seed + epoch))
    warm_steps = int(args.target_warmup * args.steps)
    prog = common.Progress(args.steps, f"{args.method}", start=step)
    acc = {}

    def export_ratios(g, t):
        raw = g.keep_ratios()
        ratios, achieved, mult = schedule_mod.calibrate(raw, calib, t, d, f, args.placement, nl)
        return raw, schedule_mod.rounded(ratios), achieved, mult

    def save_ckpt(step, epoch, pos):
        common.atomic_torch_save({
            "student": student.state_dict(), "gates": gates.state_dict(), "lambdas": lambdas.state_dict(),
            "opt": opt.state_dict(), "gate_opt": gate_opt.state_dict(), "lam_opt": lam_opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "rng": torch.get_rng_state(),
            "step": step, "epoch": epoch, "pos": pos}, ckpt)

    student_params = [p for p in student.parameters() if p.requires_grad]
    student.train()
    gates.train()
    while step < args.steps:
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
            batches = data.bucketed_batches(lengths, args.batch_size, random.Random(args.seed + epoch))
        bidx = batches[pos]
        pos += 1
        ti = step % len(targets)
        g = gates[ti]
        ids, presence = data.pad_batch([train[sel[j]][0] for j in bidx], tok.pad_id)
        tl = torch.from_numpy(t_logits[bidx])
        timp = torch.zeros_like(presence)
        for b, j in enumerate(bidx):
            timp[b, :len(t_imps[j])] = torch.from_numpy(t_imps[j])
        coarse, fine = g.sample(gen)
        seen = {}

        def pruner(l, imp, pres):
            if l in rank_layers:
                seen[l] = (imp, pres > 0)
            if g.prunable[l] > 0:
                return pres * g.token_mask(l, imp, pres, coarse, fine)
            return pres

        logits, _, _ = student(ids, presence, pruner=pruner)
        kd = kd_loss(logits, tl, args.temperature)
        rk = torch.zeros(())
        if alpha > 0:
            parts = []
            for l in rank_layers:
                imp, present = seen[l]
                valid = present.clone()
                valid[:, 0] = False
                gains = ranking.teacher_gains(timp, valid, args.rank_topk)
                parts.append(ranking.lambda_loss(torch.log(imp + 1e-9), gains, valid))
            rk = torch.stack(parts).mean()
        progress = step / args.steps
        w_rank = alpha * max(0.01, 1.0 - progress)
        target = targets[ti]
        t_now = target_at(step, warm_steps, target)
        s = expected_flops_fraction(g.expected_keep().double(), h_len, h_cnt, d, f, args.placement, nl)
        gap = (s - t_now).float()
        lag = lambdas[ti][0] * gap + lambdas[ti][1] * gap * gap
        loss = kd + w_rank * rk + lag
        opt.zero_grad(set_to_none=True)
        gate_opt.zero_grad(set_to_none=True)
        lam_opt.zero_grad(set_to_none=True)
        if alpha > 0:
            # The ranking loss trains the student's attention, not the gates: through the soft
            # presence (log m in the attention scores, gradient 1/m) it would otherwise hold every
            # token of the ranked layers in place.
            rgrads = torch.autograd.grad(w_rank * rk, student_params, retain_graph=True,
                                         allow_unused=True)
        (kd + lag).backward()
        if alpha > 0:
            for p, gr in zip(student_params, rgrads):
                if gr is not None:
                    p.grad = gr if p.grad is None else p.grad + gr
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        gate_opt.step()
        lam_opt.step()
        sched.step()
        step += 1
        prog.update(1, kd=kd.item(), rank=rk.item(), s=float(s), t=t_now)
        if step % 20 == 0 or step == args.steps:
            log.write(step=step, epoch=epoch, target_index=ti, target=target, target_now=t_now,
                      kd=kd.item(), rank=rk.item(), rank_weight=w_rank, lagrangian=lag.item(),
                      expected_flops=float(s), lambda1=float(lambdas[ti][0]), lambda2=float(lambdas[ti][1]),
                      expected_keep=[round(x, 4) for x in g.keep_ratios()], lr=sched.get_last_lr()[0])
        if step % args.eval_every == 0 or step == args.steps:
            for k, t in enumerate(targets):
                gates[k].eval()
                _, ratios, achieved, _ = export_ratios(gates[k], t)
                res = evaluate.evaluate(student, dev, ratios, args.placement)
                gates[k].train()
                acc[t] = res["accuracy"]
                log.write(step=step, eval=True, target=t, dev_acc=res["accuracy"],
                          dev_flops=res["flops_fraction"], calib_flops=achieved, keep_ratios=ratios)
                print(f"step {step} target {t}: dev acc {res['accuracy']:.4f} at real FLOPs "
                      f"{res['flops_fraction']:.4f} ({res['flops_reduction']:.2f}x) ratios "
                      f"{[round(r, 3) for r in ratios]}", file=sys.stderr)
            student.train()
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt(step, epoch, pos)
        if args.stop_after is not None and step >= args.stop_after and step < args.steps:
            save_ckpt(step, epoch, pos)
            print(f"stopped at step {step} (--stop-after)", file=sys.stderr)
            return None

    export(args, student, gates, targets, default_target, calib, vocab, dev, log)


def export(args, student, gates, targets, default_target, calib, vocab, dev, log):
    """Model directory + schedules; then re-loads the exported (fp16) model and evaluates it."""
    cfg = student.config
    d, f, nl = cfg.hidden_size, cfg.intermediate_size, cfg.num_labels
    common.save_model(student, args.out, vocab, dtype=args.dtype)
    os.makedirs(os.path.join(args.out, "schedules"), exist_ok=True)
    prefix = "top" if args.method == "top" else "gates-no-ranking"
    results = {"method": args.method, "targets": {}}
    exported, _ = common.load_model(args.out)
    for k, t in enumerate(targets):
        g = gates[k]
        g.eval()
        raw = g.keep_ratios()
        ratios, achieved, mult = schedule_mod.calibrate(raw, calib, t, d, f, args.placement, nl)
        coarse, fine = g.bin_masks()
        comments = [
            f"ToP schedule ({args.method}) trained for {t:g} of the unpruned real-length FLOPs "
            f"({ratio_name(t)} reduction)",
            "learned expected keep fractions: [" + ", ".join(f"{x:.4f}" for x in raw) + "]",
            f"scaled by {mult:.4f} on the pruned fractions so the FLOPs of the calibration sentences "
            f"(SST-2 train full sentences, ceil rounding) are {achieved:.4f} of unpruned",
            "coarse gates (layer prunes): " + str([int(x) for x in coarse.tolist()]),
        ] + [f"fine bin gates layer {l}: " + "".join(str(int(x)) for x in fine[l].tolist())
             for l in range(len(raw))]
        name = f"{prefix}-{ratio_name(t)}.yaml"
        path = os.path.join(args.out, "schedules", name)
        ratios = schedule_mod.write(path, ratios, args.placement, t, args.method, comments)["keep_ratios"]
        if t == default_target:
            schedule_mod.write(os.path.join(args.out, "pruning.yaml"), ratios, args.placement, t,
                               args.method, comments)
        res = evaluate.evaluate(exported, dev, ratios, args.placement)
        results["targets"][str(t)] = {"schedule": os.path.join("schedules", name), "keep_ratios": ratios,
                                      "learned_keep": raw, "multiplier": mult, "calib_flops": achieved,
                                      **{k2: v for k2, v in res.items() if k2 not in ("keep_ratios",)}}
        log.write(final=True, target=t, dev_acc=res["accuracy"], dev_flops=res["flops_fraction"],
                  keep_ratios=ratios)
        print(f"exported {path}: dev accuracy {res['accuracy'] * 100:.2f}% at real-length FLOPs "
              f"{res['flops_fraction'] * 100:.2f}% ({res['flops_reduction']:.2f}x)", file=sys.stderr)
    unp = evaluate.evaluate(exported, dev, None)
    results["unpruned"] = {"accuracy": unp["accuracy"]}
    with open(os.path.join(args.work, "result.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
