"""pruning.yaml (the schedule file the engine reads): write, read, validate; FLOPs of a schedule over
a set of lengths; calibration of a learned shape to a FLOPs target.

Format:
    version: 1
    placement: after_mha          # or between_layers
    keep_ratios: [1.0, 0.7, ...]  # one per layer; layer l keeps ceil(r_l * tokens entering it), >= 1
    target_flops: 0.25            # optional: training's FLOPs target (fraction of unpruned, real length)
    method: top                   # top | topk-untrained | gates-no-ranking
"""
import math

import yaml

import cost

METHODS = ("top", "topk-untrained", "gates-no-ranking")


def validate(sched, num_layers=None):
    if sched.get("version") != 1:
        raise ValueError(f"pruning schedule: version must be 1, got {sched.get('version')!r}")
    if sched.get("placement", cost.AFTER_MHA) not in cost.PLACEMENTS:
        raise ValueError(f"pruning schedule: unknown placement {sched.get('placement')!r}")
    r = sched.get("keep_ratios")
    if not isinstance(r, list) or not r:
        raise ValueError("pruning schedule: keep_ratios must be a non-empty list")
    for x in r:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0.0 < x <= 1.0):
            raise ValueError(f"pruning schedule: keep ratio {x!r} is not in (0, 1]")
    if num_layers is not None and len(r) != num_layers:
        raise ValueError(f"pruning schedule: {len(r)} keep ratios for {num_layers} layers")
    t = sched.get("target_flops")
    if t is not None and not (0.0 < float(t) <= 1.0):
        raise ValueError(f"pruning schedule: target_flops {t!r} is not in (0, 1]")
    if sched.get("method", "top") not in METHODS:
        raise ValueError(f"pruning schedule: unknown method {sched.get('method')!r}")
    return sched


def read(path, num_layers=None):
    with open(path, encoding="utf-8") as f:
        sched = yaml.safe_load(f)
    return validate(sched, num_layers)


def _num(x):
    s = f"{x:.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def rounded(keep_ratios):
    """Keep ratios as written to the file (6 decimals, within [1e-6, 1])."""
    return [float(_num(min(1.0, max(1e-6, r)))) for r in keep_ratios]


def write(path, keep_ratios, placement=cost.AFTER_MHA, target_flops=None, method="top",
          comments=()):
    """Writes the schedule; returns it as read back (ratios rounded to 6 decimals)."""
    ratios = rounded(keep_ratios)
    sched = {"version": 1, "placement": placement, "keep_ratios": ratios, "method": method}
    if target_flops is not None:
        sched["target_flops"] = float(_num(target_flops))
    validate(sched)
    lines = [f"# {c}" for c in comments]
    lines += ["version: 1", f"placement: {placement}",
              "keep_ratios: [" + ", ".join(_num(r) for r in ratios) + "]"]
    if target_flops is not None:
        lines.append(f"target_flops: {_num(target_flops)}")
    lines.append(f"method: {method}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return sched


def flops_ratio(keep_ratios, lengths, d, f, placement=cost.AFTER_MHA, num_labels=2):
    """Aggregate real-length FLOPs fraction: sum of pruned MACs / sum of unpruned MACs."""
    L = len(keep_ratios)
    used = sum(cost.schedule_macs(n, keep_ratios, d, f, placement, num_labels) for n in lengths)
    full = sum(cost.unpruned_macs(n, d, f, L, num_labels) for n in lengths)
    return used / full


def scale(keep_ratios, m, floor=1e-3):
    """Multiplies every layer's pruned fraction (1 - r) by m, clamped to [0, 1 - floor]."""
    return [1.0 - min(1.0 - floor, max(0.0, m * (1.0 - r))) for r in keep_ratios]


def calibrate(keep_ratios, lengths, target, d, f, placement=cost.AFTER_MHA, num_labels=2, iters=50):
    """The schedule closest to the learned shape whose real FLOPs (with the engine's ceil rounding)
    over `lengths` are <= target: one multiplier on the per-layer pruned fraction, by bisection.
    Returns (ratios, achieved fraction, multiplier)."""
    def ratio(m):
        return flops_ratio(scale(keep_ratios, m), lengths, d, f, placement, num_labels)
    pruned = [1.0 - r for r in keep_ratios]
    if max(pruned) <= 0:
        pruned = [1.0] * len(keep_ratios)
        keep_ratios = [0.0] * len(keep_ratios)  # no shape learned: uniform
    hi = 1.0 / min(p for p in pruned if p > 0)  # every pruning layer at its floor
    if ratio(hi) > target:
        return scale(keep_ratios, hi), ratio(hi), hi
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if ratio(mid) <= target:
            hi = mid
        else:
            lo = mid
    return scale(keep_ratios, hi), ratio(hi), hi


def geometric(num_layers, keep, start_layer=1):
    """A default shape without training: no pruning before start_layer, then keep `keep` per layer."""
    return [1.0 if l < start_layer else keep for l in range(num_layers)]


def planner_ratios(keep_ratios, u):
    """engine/pruning.cc BudgetPlanner::Ratios: u in [0, 2]; u <= 1 scales the learned pruned
    fractions by u x (1 / smallest pruned fraction); u > 1 then lowers every ratio linearly to 0."""
    pruned = [1.0 - r for r in keep_ratios if r < 1.0]
    full = 1.0 / min(pruned) if pruned else 0.0
    m = min(u, 1.0) * full
    r = [min(1.0, max(0.0, 1.0 - m * (1.0 - v))) for v in keep_ratios]
    if u > 1.0:
        t = min(u - 1.0, 1.0)
        r = [(1.0 - t) * v for v in r]
    return r


def planner_kept(n, keep_ratios, budget, d, f, placement=cost.AFTER_MHA, num_labels=2):
    """engine/pruning.cc BudgetPlanner::Compute for one request of n tokens at budget b: tokens kept
    per layer, shaped like the schedule, with cost <= b x unpruned (unless only [CLS] is left)."""
    L = len(keep_ratios)
    if budget >= 1.0:
        return [n] * L
    limit = budget * cost.unpruned_macs(n, d, f, L, num_labels)

    def c(kept):
        return cost.encoder_macs(n, kept, d, f, placement, num_labels, layers=L)
    lo, hi = 0.0, 2.0
    best = cost.schedule_kept(n, planner_ratios(keep_ratios, hi))
    if c(best) > limit:
        return best
    for _ in range(60):
        if hi - lo <= 1e-12:
            break
        mid = 0.5 * (lo + hi)
        kept = cost.schedule_kept(n, planner_ratios(keep_ratios, mid))
        if c(kept) <= limit:
            hi, best = mid, kept
        else:
            lo = mid
    return best
