"""Ranking distillation: a LambdaLoss-family (Wang et al. 2018, NDCG-Loss2++) learning-to-rank loss.

The teacher's last-layer token importance defines graded relevance: its top-k tokens (k = 20 by
default, [CLS] excluded) get gain (k - rank) / k, the rest 0. The student's scores (log importance in
an early layer) are trained to order tokens the same way:

    loss = - sum_{i, j: G_i > G_j} w_ij log2 sigmoid(sigma (s_i - s_j))
    w_ij = |G_i - G_j| (rho_ij + mu delta_ij) / maxDCG
    rho_ij   = |1/D(r_i) - 1/D(r_j)|                    (LambdaRank's NDCG swap weight)
    delta_ij = |1/D(|r_i - r_j|) - 1/D(|r_i - r_j| + 1)|  (NDCG-Loss2's rank-distance weight)
    D(r) = log2(1 + r),  r = 1-based rank of a token under the student's current scores.

Ranks and weights carry no gradient (as in LambdaLoss); the loss is averaged over sequences that
have at least one ordered pair.
"""
import torch
import torch.nn.functional as F


def teacher_gains(teacher_importance, valid, k=20):
    """Graded relevance from the teacher's importance: (k - rank)/k for its top-k valid tokens."""
    score = teacher_importance.masked_fill(~valid, float("-inf"))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    gains = ((k - rank).clamp(min=0).float() / k)
    return torch.where(valid, gains, torch.zeros_like(gains))


def lambda_loss(scores, gains, valid, mu=10.0, sigma=1.0):
    """scores, gains [B, n]; valid [B, n] bool. Returns a scalar."""
    B, n = scores.shape
    with torch.no_grad():
        s = scores.detach().masked_fill(~valid, float("-inf"))
        order = torch.sort(s, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(1, n + 1).expand_as(order).contiguous())
        rank = rank.float()
        inv_d = 1.0 / torch.log2(1.0 + rank)
        ideal = torch.sort(gains.masked_fill(~valid, 0.0), dim=-1, descending=True).values
        max_dcg = (ideal / torch.log2(torch.arange(2, n + 2, dtype=torch.float))).sum(-1)
        rho = (inv_d[:, :, None] - inv_d[:, None, :]).abs()
        dist = (rank[:, :, None] - rank[:, None, :]).abs()
        delta = (1.0 / torch.log2(1.0 + dist.clamp(min=1)) - 1.0 / torch.log2(2.0 + dist)).abs()
        gdiff = gains[:, :, None] - gains[:, None, :]
        pairs = (gdiff > 0) & valid[:, :, None] & valid[:, None, :]
        w = gdiff.clamp(min=0) * (rho + mu * delta) / max_dcg.clamp(min=1e-12)[:, None, None]
        w = torch.where(pairs, w, torch.zeros_like(w))
        has = pairs.flatten(1).any(-1)
    diff = scores[:, :, None] - scores[:, None, :]
    # -log2 sigmoid(x) = softplus(-x) / ln 2; padded scores may be -inf: keep them out of the graph.
    diff = torch.where(pairs, diff, torch.zeros_like(diff))
    per_seq = (w * F.softplus(-sigma * diff)).flatten(1).sum(-1) / 0.6931471805599453
    if not bool(has.any()):
        return scores.sum() * 0.0
    return per_seq[has].mean()
