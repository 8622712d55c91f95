#!/usr/bin/env python3
"""Fits the rational erf of engine/simd_math.h: erf(x) ~ x P(x^2) / Q(x^2) on [0, 4], Q(0) = 1.

Loeb's iteration: solve the linearised least-squares problem x P(t) - erf(x) (Q(t) - 1) = erf(x),
weighted by 1 / Q(t) of the previous fit, until it settles. Then evaluates the fit as the engine
does (float32 Horner, clamp to [-4, 4], one division) and prints the worst absolute error against
math.erf, with the coefficients in the order the C++ Horner loops use them.

  /usr/bin/python3 tools/fit_erf.py [--p 5 --q 5]
"""
import argparse
import math

import numpy as np


def fit(p_deg, q_deg, iters=30):
    x = np.linspace(0.0, 4.0, 20001)
    e = np.array([math.erf(v) for v in x])
    t = x * x
    w = np.ones_like(x)
    for _ in range(iters):
        a = np.hstack([x[:, None] * t[:, None] ** np.arange(p_deg + 1),
                       -(e[:, None] * t[:, None] ** np.arange(1, q_deg + 1))])
        c, *_ = np.linalg.lstsq(a * w[:, None], e * w, rcond=None)
        p, q = c[:p_deg + 1], np.concatenate([[1.0], c[p_deg + 1:]])
        w = 1.0 / np.abs(np.polyval(q[::-1], t))
    return p, q


def horner32(coeffs, t):
    acc = np.float32(coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = (acc * t + np.float32(c)).astype(np.float32)
    return acc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p", type=int, default=5)
    ap.add_argument("--q", type=int, default=5)
    args = ap.parse_args()
    p, q = fit(args.p, args.q)
    x = np.clip(np.linspace(-6, 6, 240001).astype(np.float32), -4, 4)
    t = x * x
    y = (x * horner32(p, t) / horner32(q, t)).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in np.linspace(-6, 6, 240001).astype(np.float32)])
    print(f"worst |error| in float32: {np.max(np.abs(y - ref)):.3g}")
    print("P, highest degree first:", [float(v) for v in p[::-1]])
    print("Q, highest degree first:", [float(v) for v in q[::-1]])


if __name__ == "__main__":
    main()
