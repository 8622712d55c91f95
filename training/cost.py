"""The cost model (MACs) of the BERT encoder under token pruning. FLOPs = 2 x MACs.

This is the Python twin of engine/cost_model.{h,cc} and of the cost model in
../shared/notes/token-pruning.md. Per layer with n tokens in, hidden d, FFN width f and n' tokens
kept at the layer's pruning point:

    Q, K, V projections            3 n d^2
    attention scores and context   2 n^2 d
    attention output projection    n d^2
    FFN (up and down)              2 n' d f   (n' = n for placement between_layers or no pruning)

Heads: pooler + classifier on [CLS] (d^2 + d * num_labels), or the QA projection on every token
(2 d per token). Embeddings are table look-ups and count 0 MACs.

The functions are plain arithmetic, so they work on Python ints (exact, what the engine reports) and
on floats / torch tensors (the trainer's differentiable *expected* FLOPs) without a second copy of
the formula.
"""
import math

AFTER_MHA = "after_mha"
BETWEEN_LAYERS = "between_layers"
PLACEMENTS = (AFTER_MHA, BETWEEN_LAYERS)


def layer_macs(n, n_kept, d, f, placement=AFTER_MHA):
    """MACs of one encoder layer with n tokens in and n_kept kept at its pruning point."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}")
    ffn_tokens = n_kept if placement == AFTER_MHA else n
    return (3 * n * d * d          # Q, K, V projections
            + 2 * n * n * d        # scores (Q K^T) and context (P V)
            + n * d * d            # attention output projection
            + 2 * ffn_tokens * d * f)  # FFN up and down


def head_macs(d, num_labels=2, tokens_out=1, qa=False):
    """MACs of the heads: pooler + classifier on [CLS], or the QA projection on tokens_out tokens."""
    if qa:
        return tokens_out * d * 2
    return d * d + d * num_labels


def encoder_macs(n, kept, d, f, placement=AFTER_MHA, num_labels=2, qa=False, layers=None):
    """Total MACs at length n; kept[l] = tokens remaining after layer l's pruning point.

    Layers beyond len(kept) (up to `layers`) do not prune. Heads included, as in the engine.
    """
    if layers is None:
        layers = len(kept)
    total = 0
    tokens = n
    for l in range(layers):
        k = kept[l] if l < len(kept) else tokens
        total = total + layer_macs(tokens, k, d, f, placement)
        tokens = k
    return total + head_macs(d, num_labels, n if qa else 1, qa)


def unpruned_macs(n, d, f, layers, num_labels=2, qa=False):
    return encoder_macs(n, [], d, f, AFTER_MHA, num_labels, qa, layers=layers)


def tokens_kept(n, ratio):
    """Tokens kept by a layer with keep ratio `ratio` when n tokens enter it: ceil(r n), >= 1.

    Exactly engine/pruning.cc KeptTokens: ceil(r n - 1e-9), so 0.7 x 10 (7.000000000000001 in
    binary) keeps 7, clamped to [1, n]."""
    k = math.ceil(ratio * n - 1e-9)
    return max(1, min(n, k))


def schedule_kept(n, keep_ratios):
    """Tokens remaining after each layer's pruning point for a request of n tokens."""
    kept = []
    tokens = n
    for r in keep_ratios:
        tokens = tokens_kept(tokens, r)
        kept.append(tokens)
    return kept


def schedule_macs(n, keep_ratios, d, f, placement=AFTER_MHA, num_labels=2, qa=False):
    return encoder_macs(n, schedule_kept(n, keep_ratios), d, f, placement, num_labels, qa,
                        layers=len(keep_ratios))


def expected_macs(n, keep_fracs, d, f, placement=AFTER_MHA, num_labels=2):
    """Differentiable expected MACs: keep_fracs[l] is the expected fraction of the tokens entering
    layer l that it keeps (float or tensor); n may be a tensor of lengths. Same formula, fractional
    token counts (no ceil)."""
    kept = []
    tokens = n
    for k in keep_fracs:
        tokens = tokens * k
        kept.append(tokens)
    return encoder_macs(n, kept, d, f, placement, num_labels, layers=len(keep_fracs))
