"""A BERT encoder in PyTorch for training, with Hugging Face parameter names.

The module tree mirrors transformers' BertForSequenceClassification, so `state_dict()` keys are
exactly the tensor names of our model directories (bert.encoder.layer.N.attention.self.query.weight,
...). The forward runs padded batches with a per-token *presence* mask instead of the engine's packed
layout: a pruned token is removed from every later attention as a key (its probability is exactly 0)
and from the importance average as a query row. Since classification reads only [CLS], this gives the
same logits as dropping the token (the engine's rule) while keeping tensors rectangular. Presence may
be fractional during training (soft gate values): key j then enters the softmax with weight m_j,
p_ij = m_j exp(s_ij) / sum_k m_k exp(s_ik).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e9  # exp(NEG - max) underflows to exactly 0 in float32


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    id2label: dict = field(default_factory=lambda: {"0": "negative", "1": "positive"})

    @property
    def num_labels(self):
        return len(self.id2label)

    @classmethod
    def from_dict(cls, d):
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        if "id2label" in known:
            known["id2label"] = {str(k): v for k, v in known["id2label"].items()}
        elif "num_labels" in d:
            known["id2label"] = {str(i): f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        if known.get("hidden_act", "gelu") not in ("gelu", "gelu_python", "gelu_new",
                                                   "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"unsupported hidden_act {known['hidden_act']!r}")
        return cls(**known)

    def to_dict(self):
        return {
            "architectures": ["BertForSequenceClassification"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "layer_norm_eps": self.layer_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
            "id2label": dict(self.id2label),
            "label2id": {v: int(k) for k, v in self.id2label.items()},
        }


def activation(name):
    if name in ("gelu", "gelu_python"):
        return lambda x: F.gelu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(name)


class _Namespace(nn.Module):
    """A plain container so that attribute paths spell Hugging Face's tensor names."""


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, ids, type_ids=None):
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None]
        if type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(type_ids)
        return self.dropout(self.LayerNorm(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.hidden_size
        self.num_heads = c.num_attention_heads
        self.attention = _Namespace()
        self.attention.add_module("self", _Namespace())
        sa = getattr(self.attention, "self")
        sa.query = nn.Linear(d, d)
        sa.key = nn.Linear(d, d)
        sa.value = nn.Linear(d, d)
        self.attention.output = _Namespace()
        self.attention.output.dense = nn.Linear(d, d)
        self.attention.output.LayerNorm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.intermediate = _Namespace()
        self.intermediate.dense = nn.Linear(d, c.intermediate_size)
        self.output = _Namespace()
        self.output.dense = nn.Linear(c.intermediate_size, d)
        self.output.LayerNorm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.act = activation(c.hidden_act)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.attn_dropout = nn.Dropout(c.attention_probs_dropout_prob)

    def mha(self, x, presence):
        """x [B, n, d]; presence [B, n] in [0, 1] (0 = absent key). Returns (out, probs[B,h,n,n])."""
        B, n, d = x.shape
        h = self.num_heads
        dh = d // h
        sa = getattr(self.attention, "self")
        q = sa.query(x).view(B, n, h, dh).transpose(1, 2)
        k = sa.key(x).view(B, n, h, dh).transpose(1, 2)
        v = sa.value(x).view(B, n, h, dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)
        present = presence > 0
        bias = torch.where(present, torch.log(presence.clamp_min(1e-12)),
                           torch.full_like(presence, NEG))
        probs = torch.softmax(scores + bias[:, None, None, :], dim=-1)
        ctx = torch.matmul(self.attn_dropout(probs), v).transpose(1, 2).reshape(B, n, d)
        out = self.attention.output.dense(ctx)
        out = self.attention.output.LayerNorm(x + self.dropout(out))
        return out, probs

    def ffn(self, x):
        y = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + self.dropout(y))


def token_importance(probs, presence):
    """Attention received: probs [B,h,n,n] averaged over heads and over present query rows.

    presence [B, n] weights the query rows (0/1 at inference; soft in training)."""
    w = presence / presence.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("bhij,bi->bj", probs, w) / probs.shape[1]


class Bert(nn.Module):
    """BertForSequenceClassification (plus an optional masked-LM head for pre-training)."""

    def __init__(self, config, mlm_head=False):
        super().__init__()
        self.config = config
        c = config
        self.bert = _Namespace()
        self.bert.embeddings = Embeddings(c)
        self.bert.encoder = _Namespace()
        self.bert.encoder.layer = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
        self.bert.pooler = _Namespace()
        self.bert.pooler.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        if mlm_head:
            self.mlm = _Namespace()
            self.mlm.dense = nn.Linear(c.hidden_size, c.hidden_size)
            self.mlm.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
            self.mlm.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def layers(self):
        return self.bert.encoder.layer

    def weights_state_dict(self):
        """Tensors of the model directory (no MLM head)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("mlm.")}

    def encode(self, ids, presence, type_ids=None, pruner=None, need_importance=False):
        """Runs the encoder. presence [B, n] float (1 real token, 0 padding).

        pruner(l, importance, presence) -> new presence, called after layer l's MHA (the FFN then
        runs, as placement after_mha; for classification the placement changes only the cost).
        Returns (hidden [B,n,d], list of per-layer importance [B,n] if requested, final presence).
        """
        x = self.bert.embeddings(ids, type_ids)
        imps = []
        for l, layer in enumerate(self.layers):
            x, probs = layer.mha(x, presence)
            if need_importance or pruner is not None:
                imp = token_importance(probs, presence)
                if need_importance:
                    imps.append(imp)
                if pruner is not None:
                    presence = pruner(l, imp, presence)
            x = layer.ffn(x)
        return x, imps, presence

    def classify(self, hidden):
        pooled = torch.tanh(self.bert.pooler.dense(hidden[:, 0]))
        return self.classifier(self.dropout(pooled))

    def forward(self, ids, presence, type_ids=None, pruner=None, need_importance=False):
        hidden, imps, presence = self.encode(ids, presence, type_ids, pruner, need_importance)
        return self.classify(hidden), imps, presence

    def mlm_logits(self, hidden_at_masked):
        h = self.mlm.LayerNorm(F.gelu(self.mlm.dense(hidden_at_masked)))
        return h @ self.bert.embeddings.word_embeddings.weight.t() + self.mlm.bias


def topk_pruner(keep_ratios=None, kept_per_seq=None, cls_index=0):
    """The deployable rule: after layer l's MHA keep ceil(r_l * n_l) (>= 1) of the n_l tokens present,
    by importance; [CLS] always kept; ties broken by position (lower index wins).
    kept_per_seq[b][l] instead gives the count directly (the engine's per-request budget plans)."""
    from cost import tokens_kept

    def prune(l, imp, presence):
        if kept_per_seq is None and keep_ratios[l] >= 1.0:
            return presence
        present = presence > 0
        n_l = present.sum(-1).tolist()
        score = imp.masked_fill(~present, float("-inf")).clone()
        score[:, cls_index] = float("inf")
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        new = torch.zeros_like(presence)
        for b, n in enumerate(n_l):
            k = tokens_kept(int(n), keep_ratios[l]) if kept_per_seq is None else kept_per_seq[b][l]
            new[b, order[b, :k]] = 1.0
        return presence * new

    return prune
