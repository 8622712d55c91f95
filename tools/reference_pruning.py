#!/usr/bin/env python3
"""The ToP inference rule on top of the float64 reference BERT (tools/reference_bert.py).

Written from the method's description (shared notes), independently of the C++ engine:
- importance of token j after layer l = attention probabilities of layer l averaged over heads and
  query rows; [CLS] (position 0) is never pruned; ties go to the earlier position; survivors keep
  their order;
- `kept[l]` tokens remain after layer l's pruning point: after the attention block, before the FFN
  ("after_mha"), or after the whole layer ("between_layers");
- QA: a dropped token's last full hidden state (the layer input for after_mha, the layer output for
  between_layers) is carried to the output, so every token gets start/end logits.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_bert  # noqa: E402,F401  (load_model lives there)


def select(probs, count):
    """Indices (ascending) of the `count` tokens to keep, given probs [heads, n, n]."""
    n = probs.shape[-1]
    if count >= n:
        return list(range(n))
    importance = probs.mean(dim=(0, 1)).tolist()
    ranked = sorted(range(1, n), key=lambda j: (-importance[j], j))
    return [0] + sorted(ranked[: count - 1])


def forward_pruned(model, input_ids, token_type_ids, kept, placement="after_mha"):
    """One sequence with a pruning plan -> outputs dict plus "kept_positions" per layer."""
    if placement not in ("after_mha", "between_layers"):
        raise ValueError(f"unknown placement {placement!r}")
    n = len(input_ids)
    if len(kept) != model.num_layers:
        raise ValueError(f"plan has {len(kept)} layers, model {model.num_layers}")
    with torch.no_grad():
        x = model.embeddings(torch.tensor(input_ids, dtype=torch.long),
                             torch.tensor(token_type_ids, dtype=torch.long))
        positions = list(range(n))
        carried = torch.zeros_like(x)
        kept_positions = []
        for layer in range(model.num_layers):
            y, probs = model.attention_block(layer, x)
            keep = select(probs, kept[layer])
            dropped = [i for i in range(len(positions)) if i not in set(keep)]
            if placement == "after_mha":
                for i in dropped:
                    carried[positions[i]] = x[i]
                x = model.feed_forward(layer, y[keep])
            else:
                x = model.feed_forward(layer, y)
                for i in dropped:
                    carried[positions[i]] = x[i]
                x = x[keep]
            positions = [positions[i] for i in keep]
            kept_positions.append(list(positions))
        for row, p in enumerate(positions):
            carried[p] = x[row]
        if model.task == "cls":
            out = model.classify(x)
        else:
            out = model.answer_spans(carried)
    out["kept_positions"] = kept_positions
    return out
