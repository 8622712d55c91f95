// Vectorized activation functions for our own fused passes (the int8 epilogue), on GCC vector
// extensions: 16 floats, which the x86-64-v4 clone of a caller runs as one AVX-512 register and the
// AVX2 baseline as two. oneDNN has the same functions, but only as a pass of their own over memory;
// these run on a row while it is in registers. Accuracy (checked in tests/dnnl_ops_test.cc against
// std::erf / std::tanh): Exp within 3e-7 relative on [-87, 0], Erf within 6e-7 absolute, so GELU
// differs from the exact one by < 1e-6 relative to |x|. Everything is always_inline: a call between
// a v4 clone and a baseline function would pass 64-byte vectors under two different ABIs.
#pragma once

#include <cstdint>

// GCC warns, in every function of the AVX2 baseline that uses these types, that 64-byte vector
// arguments would have another ABI without AVX-512; the functions here are always inlined, so no
// such call exists. The pragma stays on for the including file (only the int8 epilogue and its
// test include this header), since the warning is raised at the call sites.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace topserve::engine::simd {

using F16 = float __attribute__((vector_size(64)));
using I16 = int32_t __attribute__((vector_size(64)));

[[gnu::always_inline]] inline F16 Splat(float v) { return F16{} + v; }

[[gnu::always_inline]] inline F16 Min(F16 a, F16 b) { return a < b ? a : b; }
[[gnu::always_inline]] inline F16 Max(F16 a, F16 b) { return a > b ? a : b; }
[[gnu::always_inline]] inline F16 Abs(F16 a) {
  return reinterpret_cast<F16>(reinterpret_cast<I16>(a) & 0x7fffffff);
}

// e^x for x <= 0 (clamped below at -87.3, where it underflows to ~1e-38), Cephes expf's reduction
// and polynomial: x = n ln2 + r, |r| <= ln2 / 2. n = round(x / ln2) by adding 1.5 x 2^23, which
// leaves n in the low mantissa bits (two adds instead of converts, compare and floor: tanh in the
// int8 epilogue is bound by this function's instruction count).
[[gnu::always_inline]] inline F16 ExpNonPositive(F16 x) {
  x = Max(x, Splat(-87.3f));
  constexpr float kRound = 12582912.0f;  // 1.5 x 2^23
  const F16 fn = x * 1.44269504088896341f + kRound;
  const F16 nf = fn - kRound;
  const I16 n = reinterpret_cast<I16>(fn) - 0x4B400000;  // the bits of kRound
  const F16 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  F16 p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * reinterpret_cast<F16>((n + 127) << 23);
}

// erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (erf(4) rounds to 1 in float), P and Q of degree 5: a
// rational fit of our own (tools/fit_erf.py), within 4e-7 of erf in float arithmetic. It needs no
// exp: 12 multiply-adds and one division against Abramowitz and Stegun's formula's ~25 operations
// with an exp, which made GELU the largest part of the int8 output pass.
[[gnu::always_inline]] inline F16 Erf(F16 x) {
  x = Min(Max(x, Splat(-4.0f)), Splat(4.0f));
  const F16 t = x * x;
  F16 p = Splat(2.0272865729341626e-06f);
  p = p * t + 2.861879973574012e-04f;
  p = p * t + 3.8447062794981705e-03f;
  p = p * t + 5.2981763019045836e-02f;
  p = p * t + 1.923081935160923e-01f;
  p = p * t + 1.1283790461442462f;
  F16 q = Splat(3.792855606658639e-05f);
  q = q * t + 1.1810574145029629e-03f;
  q = q * t + 1.512442889325412e-02f;
  q = q * t + 1.1487953582775569e-01f;
  q = q * t + 5.037605983866871e-01f;
  q = q * t + 1.0f;
  return x * p / q;
}

// tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1)) = sign(x) (1 - e) / (1 + e) with e = e^{-2|x|}.
[[gnu::always_inline]] inline F16 Tanh(F16 x) {
  const F16 e = ExpNonPositive(-2.0f * Abs(x));
  const F16 y = (1.0f - e) / (1.0f + e);
  const I16 sign = reinterpret_cast<I16>(x) & static_cast<int32_t>(0x80000000u);
  return reinterpret_cast<F16>(reinterpret_cast<I16>(y) | sign);
}

[[gnu::always_inline]] inline F16 GeluErf(F16 x) {
  return 0.5f * x * (1.0f + Erf(x * 0.70710678118654752f));
}
[[gnu::always_inline]] inline F16 GeluTanh(F16 x) {
  return 0.5f * x * (1.0f + Tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
[[gnu::always_inline]] inline F16 Relu(F16 x) { return Max(x, F16{}); }

// In-place forms for the functions of a target_clones caller. Clang checks, before inlining, that
// a caller and callee with a 64-byte vector argument or result agree on AVX-512, and the v4 clone
// and these (baseline) functions do not; a reference has one ABI. (GCC inlines first.)
[[gnu::always_inline]] inline void GeluErfInPlace(F16& x) { x = GeluErf(x); }
[[gnu::always_inline]] inline void GeluTanhInPlace(F16& x) { x = GeluTanh(x); }
[[gnu::always_inline]] inline void ReluInPlace(F16& x) { x = Relu(x); }
[[gnu::always_inline]] inline void TanhInPlace(F16& x) { x = Tanh(x); }

}  // namespace topserve::engine::simd
