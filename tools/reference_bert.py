#!/usr/bin/env python3
"""Independent reference BERT forward in float64 (PyTorch tensors, written from the math).

Not the Hugging Face transformers code: every step is spelled out here so it can be read, checked
and extended (the token-pruning rule will hook in between layers, see encode()). Weights come from
the model directory's model.safetensors (F32, F16 or BF16) and are converted to float64 exactly.

Math (Hugging Face BERT, eval mode, one unpadded sequence):
  x   = LayerNorm(word[ids] + position[0..n-1] + token_type[type_ids])
  per layer:
    a    = softmax(Q K^T / sqrt(head_dim)) V  per head, Q/K/V = x W^T + b
    x    = LayerNorm(x + a W_o^T + b_o)
    x    = LayerNorm(x + act(x W_i^T + b_i) W_2^T + b_2)     act: erf GELU, tanh GELU or ReLU
  classification: logits = tanh(x[0] W_p^T + b_p) W_c^T + b_c, probabilities = softmax(logits)
  question answering: [start, end] = x W_qa^T + b_qa (per token)

Importable:
  model = load_model("path/to/model")
  out = model.forward(input_ids, token_type_ids)  # dict of lists: logits, probabilities or
                                                  # start_logits, end_logits
CLI:
  reference_bert.py --model DIR --inputs in.jsonl --out out.jsonl   (input lines: input_ids,
      token_type_ids optional; each output line is the input line plus the outputs)
  reference_bert.py --selfcheck [--shared ../shared]   (golden tiny-cls / tiny-qa within 1e-6)
"""

import os

# Set before torch starts its thread pool: idle OpenMP workers sleep instead of spinning on the
# cores other processes share.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import topserve_model as tm  # noqa: E402

SELFCHECK_TOLERANCE = 1e-6


def configure_threads(threads=None):
    """One thread by default (TOPSERVE_REF_THREADS or --threads override): the machines are shared,
    and a bert-base forward of 128 tokens takes about 1 s on one core in float64."""
    if threads is None:
        threads = int(os.environ.get("TOPSERVE_REF_THREADS", "0")) or 1
    torch.set_num_threads(max(1, threads))


def linear(x, weight, bias):
    """x [n, in] -> [n, out] with a Hugging Face Linear weight [out, in]."""
    return x @ weight.T + bias


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as torch's LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta


def softmax(x, dim=-1):
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def gelu(x):  # exact: x * Phi(x)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):  # gelu_new / gelu_pytorch_tanh
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def relu(x):
    return torch.clamp(x, min=0.0)


ACTIVATION_FUNCTIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu}


class ReferenceBert:
    """A BERT task model (classification or question answering) evaluated in float64."""

    def __init__(self, config, tensors):
        self.config = config
        self.task = tm.config_task(config)
        self.labels = tm.config_labels(config) if self.task == "cls" else []
        self.hidden = config["hidden_size"]
        self.num_layers = config["num_hidden_layers"]
        self.num_heads = config["num_attention_heads"]
        self.head_dim = self.hidden // self.num_heads
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_positions = config.get("max_position_embeddings", 512)
        self.type_vocab_size = config.get("type_vocab_size", 2)
        act = config.get("hidden_act", "gelu")
        if act not in tm.ACTIVATIONS:
            raise ValueError(f"config.json: unsupported hidden_act {act!r}")
        self.activation = ACTIVATION_FUNCTIONS[tm.ACTIVATIONS[act]]
        # float32 (or F16/BF16 converted exactly to float32) -> float64: exact.
        self.w = {name: torch.from_numpy(np.asarray(t, dtype=np.float64))
                  for name, t in tensors.items() if np.asarray(t).dtype.kind == "f"}

    def p(self, name):
        return self.w[name]

    # -- blocks ---------------------------------------------------------------------------------

    def embeddings(self, input_ids, token_type_ids):
        n = input_ids.shape[0]
        e = "bert.embeddings."
        x = (self.p(e + "word_embeddings.weight")[input_ids]
             + self.p(e + "position_embeddings.weight")[torch.arange(n)]
             + self.p(e + "token_type_embeddings.weight")[token_type_ids])
        return layer_norm(x, self.p(e + "LayerNorm.weight"), self.p(e + "LayerNorm.bias"), self.eps)

    def self_attention(self, layer, x):
        """Multi-head self-attention of layer `layer` on x [n, hidden].

        Returns (context [n, hidden] before the output projection, probabilities [heads, n, n])."""
        s = f"bert.encoder.layer.{layer}.attention.self."
        n = x.shape[0]

        def heads(t):  # [n, hidden] -> [heads, n, head_dim]
            return t.reshape(n, self.num_heads, self.head_dim).transpose(0, 1)

        q = heads(linear(x, self.p(s + "query.weight"), self.p(s + "query.bias")))
        k = heads(linear(x, self.p(s + "key.weight"), self.p(s + "key.bias")))
        v = heads(linear(x, self.p(s + "value.weight"), self.p(s + "value.bias")))
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)  # [heads, n(query), n(key)]
        probs = softmax(scores, dim=-1)
        context = (probs @ v).transpose(0, 1).reshape(n, self.hidden)
        return context, probs

    def attention_block(self, layer, x):
        """Self-attention + output projection + residual + LayerNorm. Returns (x, probabilities)."""
        o = f"bert.encoder.layer.{layer}.attention.output."
        context, probs = self.self_attention(layer, x)
        y = linear(context, self.p(o + "dense.weight"), self.p(o + "dense.bias"))
        y = layer_norm(x + y, self.p(o + "LayerNorm.weight"), self.p(o + "LayerNorm.bias"), self.eps)
        return y, probs

    def feed_forward(self, layer, x):
        """Intermediate dense + activation + output dense + residual + LayerNorm."""
        p = f"bert.encoder.layer.{layer}."
        h = self.activation(linear(x, self.p(p + "intermediate.dense.weight"),
                                   self.p(p + "intermediate.dense.bias")))
        y = linear(h, self.p(p + "output.dense.weight"), self.p(p + "output.dense.bias"))
        return layer_norm(x + y, self.p(p + "output.LayerNorm.weight"), self.p(p + "output.LayerNorm.bias"),
                          self.eps)

    def encoder_layer(self, layer, x):
        """One transformer layer. Returns (x, attention probabilities [heads, n, n])."""
        x, probs = self.attention_block(layer, x)
        x = self.feed_forward(layer, x)
        return x, probs

    def encode(self, input_ids, token_type_ids):
        """Embeddings and every layer. Returns (last hidden state [n, hidden], per-layer probs)."""
        x = self.embeddings(input_ids, token_type_ids)
        attentions = []
        for layer in range(self.num_layers):
            x, probs = self.encoder_layer(layer, x)
            attentions.append(probs)
        return x, attentions

    # -- heads ----------------------------------------------------------------------------------

    def classify(self, hidden):
        pooled = torch.tanh(linear(hidden[0:1], self.p("bert.pooler.dense.weight"),
                                   self.p("bert.pooler.dense.bias")))
        logits = linear(pooled, self.p("classifier.weight"), self.p("classifier.bias"))[0]
        return {"logits": logits.tolist(), "probabilities": softmax(logits, dim=-1).tolist()}

    def answer_spans(self, hidden):
        logits = linear(hidden, self.p("qa_outputs.weight"), self.p("qa_outputs.bias"))  # [n, 2]
        return {"start_logits": logits[:, 0].tolist(), "end_logits": logits[:, 1].tolist()}

    def check_inputs(self, input_ids, token_type_ids):
        n = len(input_ids)
        if n == 0:
            raise ValueError("input_ids is empty")
        if len(token_type_ids) != n:
            raise ValueError(f"token_type_ids has {len(token_type_ids)} entries, input_ids {n}")
        if n > self.max_positions:
            raise ValueError(f"{n} tokens exceed max_position_embeddings {self.max_positions}")
        vocab = self.p("bert.embeddings.word_embeddings.weight").shape[0]
        for name, values, limit in (("input_ids", input_ids, vocab),
                                    ("token_type_ids", token_type_ids, self.type_vocab_size)):
            bad = [v for v in values if not isinstance(v, (int, np.integer)) or not 0 <= v < limit]
            if bad:
                raise ValueError(f"{name} holds {bad[0]!r}, outside [0, {limit})")

    def forward(self, input_ids, token_type_ids=None, return_attentions=False):
        """One unpadded sequence -> dict of python lists (logits + probabilities for classification,
        start_logits + end_logits for question answering; "attentions" [layer][head][i][j] when
        asked)."""
        input_ids = [int(v) for v in input_ids] if isinstance(input_ids, np.ndarray) else list(input_ids)
        if token_type_ids is None:
            token_type_ids = [0] * len(input_ids)
        token_type_ids = list(token_type_ids)
        self.check_inputs(input_ids, token_type_ids)
        with torch.no_grad():
            hidden, attentions = self.encode(torch.tensor(input_ids, dtype=torch.long),
                                             torch.tensor(token_type_ids, dtype=torch.long))
            out = self.classify(hidden) if self.task == "cls" else self.answer_spans(hidden)
            if return_attentions:
                out["attentions"] = [a.tolist() for a in attentions]
        return out


def load_model(model_dir, threads=None):
    """Reads a model directory (config.json + model.safetensors) into a ReferenceBert.

    The process-wide torch thread count is changed only when `threads` is given (an importer such as
    a training script keeps its own setting); the CLI uses configure_threads()."""
    if threads:
        configure_threads(threads)
    config, tensors, _ = tm.read_model_dir(model_dir)
    return ReferenceBert(config, tensors)


# ----------------------------------------------------------------------------------------------
# CLI


def run_file(model, inputs_path, out_path):
    count = 0
    with open(inputs_path, "r", encoding="utf-8") as fin, open(out_path, "w", encoding="utf-8") as fout:
        for line_no, line in enumerate(fin, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{inputs_path}:{line_no}: not a JSON line ({e})") from None
            try:
                result = model.forward(record["input_ids"], record.get("token_type_ids"))
            except (KeyError, ValueError) as e:
                raise SystemExit(f"{inputs_path}:{line_no}: {e}") from None
            record.update(result)
            fout.write(json.dumps(record) + "\n")
            count += 1
    return count


def max_abs_diff(expected, actual):
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        return math.inf
    return float(np.max(np.abs(e - a))) if e.size else 0.0


def selfcheck(shared_dir, tolerance=SELFCHECK_TOLERANCE):
    """Compares the golden tiny-cls logits/probabilities and tiny-qa start/end logits. Returns 0 when
    every difference is within `tolerance`."""
    golden = os.path.join(shared_dir, "data", "golden")
    checks = (("tiny-cls", ("logits", "probabilities")), ("tiny-qa", ("start_logits", "end_logits")))
    ok = True
    for name, keys in checks:
        model_dir = os.path.join(golden, name)
        start = time.perf_counter()
        model = load_model(model_dir)
        worst = {k: 0.0 for k in keys}
        count = 0
        with open(os.path.join(model_dir, "expected.jsonl"), "r", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                out = model.forward(record["input_ids"], record["token_type_ids"])
                for k in keys:
                    d = max_abs_diff(record[k], out[k])
                    worst[k] = d if math.isnan(d) else max(worst[k], d)
                count += 1
        elapsed = time.perf_counter() - start
        bad = [k for k in keys if not worst[k] <= tolerance]  # NaN fails too
        if count == 0:
            bad.append("no inputs")
        ok = ok and not bad
        detail = ", ".join(f"{k} max|diff| {worst[k]:.3g}" for k in keys)
        print(f"reference_bert selfcheck {name}: {count} inputs, {detail} (tolerance {tolerance:g}, "
              f"{elapsed:.1f} s): {'FAIL ' + ', '.join(bad) if bad else 'ok'}")
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory")
    p.add_argument("--inputs", help="JSONL with input_ids (and token_type_ids) per line")
    p.add_argument("--out", help="output JSONL")
    p.add_argument("--selfcheck", action="store_true", help="compare with the golden tiny models")
    p.add_argument("--shared", default=tm.default_shared_dir(), help="shared data folder (%(default)s)")
    p.add_argument("--tolerance", type=float, default=SELFCHECK_TOLERANCE)
    p.add_argument("--threads", type=int, help="torch threads (default 1, or TOPSERVE_REF_THREADS)")
    args = p.parse_args(argv)
    configure_threads(args.threads)
    if args.selfcheck:
        return selfcheck(args.shared, args.tolerance)
    if not (args.model and args.inputs and args.out):
        p.error("--model, --inputs and --out are required (or --selfcheck)")
    start = time.perf_counter()
    model = load_model(args.model)
    count = run_file(model, args.inputs, args.out)
    print(f"reference_bert: {count} sequences -> {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
