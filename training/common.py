"""Shared plumbing: model directories (via tools/topserve_model.py), checkpoints, logs, progress."""
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import topserve_model  # noqa: E402  (tools/topserve_model.py)
from modeling import Bert, BertConfig  # noqa: E402


def setup_threads(n):
    if n and n > 0:
        torch.set_num_threads(n)


def load_model(model_dir, mlm_head=False):
    """A model directory in our (Hugging Face) format -> (Bert, config dict)."""
    config, tensors, _ = topserve_model.read_model_dir(model_dir)
    if topserve_model.config_task(config) != "cls":
        raise ValueError(f"{model_dir}: only BertForSequenceClassification is supported for training")
    model = Bert(BertConfig.from_dict(config), mlm_head=mlm_head)
    own = model.state_dict()
    missing = [k for k in own if k not in tensors and not k.startswith("mlm.")]
    if missing:
        raise ValueError(f"{model_dir}: missing tensors {missing[:5]}")
    with torch.no_grad():
        for k, v in own.items():
            if k in tensors:
                if tuple(tensors[k].shape) != tuple(v.shape):
                    raise ValueError(f"{model_dir}: {k} has shape {tensors[k].shape}, expected {tuple(v.shape)}")
                v.copy_(torch.from_numpy(np.asarray(tensors[k], dtype=np.float32)))
    return model, config


def save_model(model, out_dir, vocab_path, dtype="F32", extra_config=None):
    """Writes config.json, model.safetensors (tensors in checkpoint order), vocab.txt and
    tokenizer_config.json with tools/topserve_model.write_model_dir."""
    config = model.config.to_dict()
    if extra_config:
        config.update(extra_config)
    sd = model.weights_state_dict()
    tensors = {}
    for name, _ in topserve_model.tensor_specs(config):
        tensors[name] = sd[name].detach().cpu().float().numpy()
    topserve_model.write_model_dir(out_dir, config, tensors, vocab_path, dtype=dtype,
                                   tokenizer_config={"do_lower_case": True,
                                                     "model_max_length": config["max_position_embeddings"]})


def atomic_torch_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class JsonlLog:
    def __init__(self, path, append=True):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
            if not append and os.path.exists(path):
                os.remove(path)

    def write(self, **rec):
        rec.setdefault("time", round(time.time(), 3))
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


class Progress:
    """A progress bar on a terminal; a line every `every` seconds otherwise (nohup logs)."""

    def __init__(self, total, desc="", start=0, every=30.0, stream=sys.stderr):
        self.total, self.desc, self.n = total, desc, start
        self.t0 = time.time()
        self.start = start
        self.every = every
        self.last = 0.0
        self.stream = stream
        self.tty = stream.isatty()
        self.info = ""

    def update(self, n=1, **info):
        self.n += n
        if info:
            self.info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in info.items())
        now = time.time()
        if self.tty or now - self.last >= self.every or self.n >= self.total:
            self.last = now
            done = self.n - self.start
            rate = done / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            frac = self.n / max(self.total, 1)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            line = (f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f}it/s "
                    f"eta {eta / 60:.1f}m {self.info}")
            if self.tty:
                self.stream.write("\r" + line[:200])
                if self.n >= self.total:
                    self.stream.write("\n")
            else:
                self.stream.write(line + "\n")
            self.stream.flush()


def linear_schedule(step, total, warmup):
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def param_groups(model, lr, weight_decay=0.01):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in n or n.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
