"""Hard-concrete L0 gates (Louizos et al. 2018) and ToP's coarse-to-fine token gates.

A gate z in [0, 1] is sampled as
    u ~ U(0, 1);  s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clamp(s * (zeta - gamma) + gamma, 0, 1)
with stretch limits gamma = -0.1, zeta = 1.1 and temperature beta = 2/3, so z is exactly 0 or 1 with
positive probability. P(z > 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)) is the expected L0
"norm": a token whose mask is non-zero is computed, so expected FLOPs use P(z > 0). At evaluation the
gate is deterministic: z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1).

Token gates per layer l (the ones allowed to prune):
  * a coarse gate c_l: does layer l prune at all (c_l = 0 keeps every token);
  * fine gates f_{l,b}, b = 0..B-1, one per rank-percentile bin: the tokens present at layer l are
    ranked by importance ([CLS] first), token at rank p of n falls in bin floor(p B / n).
  The mask of a token in bin b is 1 - c_l (1 - f_{l,b}) ([CLS] always 1), so the expected fraction of
  the tokens entering layer l that it keeps is k_l = 1 - P(c_l > 0) (1 - mean_b P(f_{l,b} > 0)).
"""
import math

import torch
import torch.nn as nn

GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0


class HardConcrete(nn.Module):
    def __init__(self, shape, init_log_alpha=2.0, gamma=GAMMA, zeta=ZETA, beta=BETA):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(shape, float(init_log_alpha)))
        self.gamma, self.zeta, self.beta = gamma, zeta, beta

    def sample(self, generator=None):
        u = torch.rand(self.log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def deterministic(self):
        s = torch.sigmoid(self.log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def prob_nonzero(self):
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def forward(self, generator=None):
        return self.sample(generator) if self.training else self.deterministic()


class TokenGates(nn.Module):
    def __init__(self, num_layers, num_bins=20, prune_layers=None, init_log_alpha=2.0,
                 init_coarse_log_alpha=None):
        super().__init__()
        self.num_layers, self.num_bins = num_layers, num_bins
        prune_layers = list(range(num_layers)) if prune_layers is None else list(prune_layers)
        m = torch.zeros(num_layers)
        m[prune_layers] = 1.0
        self.register_buffer("prunable", m)
        self.coarse = HardConcrete((num_layers,), init_log_alpha if init_coarse_log_alpha is None
                                   else init_coarse_log_alpha)
        self.fine = HardConcrete((num_layers, num_bins), init_log_alpha)

    @property
    def prune_layers(self):
        return [l for l in range(self.num_layers) if self.prunable[l] > 0]

    def sample(self, generator=None):
        """(coarse [L], fine [L, B]) values for one training step (or deterministic in eval)."""
        if self.training:
            return self.coarse.sample(generator), self.fine.sample(generator)
        return self.coarse.deterministic(), self.fine.deterministic()

    def expected_keep(self):
        """k_l: expected fraction of the tokens entering layer l that stay computed (P(z > 0))."""
        pc = self.coarse.prob_nonzero()
        pf = self.fine.prob_nonzero().mean(-1)
        k = 1.0 - pc * (1.0 - pf)
        return torch.where(self.prunable > 0, k, torch.ones_like(k))

    def bin_masks(self):
        """Deterministic per-bin keep decisions (P(z > 0) > 0.5) and coarse decisions, for export."""
        return (self.coarse.prob_nonzero() > 0.5) & (self.prunable > 0), self.fine.prob_nonzero() > 0.5

    def keep_ratios(self):
        """Deployable per-layer keep ratios: the expected keep fractions k_l (what the FLOPs
        constraint was enforced on), as Python floats."""
        return [float(x) for x in self.expected_keep().detach()]

    def token_mask(self, l, importance, presence, coarse, fine, cls_index=0):
        """Keep values [B, n] for the tokens at layer l given this step's gate values."""
        present = presence > 0
        n = present.sum(-1, keepdim=True).clamp_min(1)
        score = importance.detach().masked_fill(~present, float("-inf")).clone()
        score[:, cls_index] = float("inf")
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
        bins = torch.div(rank * self.num_bins, n, rounding_mode="floor").clamp(max=self.num_bins - 1)
        keep = 1.0 - coarse[l] * (1.0 - fine[l][bins])
        keep = torch.where(present, keep, torch.zeros_like(keep))
        keep[:, cls_index] = 1.0
        return keep
