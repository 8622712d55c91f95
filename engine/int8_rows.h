// The row passes of the int8 path, our own code rather than oneDNN's: per-row (per-token)
// quantization of activations, and the output pass that turns an int8 matmul's result rows into
// everything the next ops read (scales, zero point, bias, activation, residual + LayerNorm, the
// fp32 row, bf16 planes, the next layer's u8 codes) while each row is in L1. oneDNN 2.6 cannot do
// this itself: its output scales are per column only, and a token's activation scale is per row.
//
// Kernels are chosen at run time (the baseline is x86-64-v3): on AVX-512 one fused routine makes
// each row in as few passes as the arithmetic allows (the range for the codes is taken while the
// values are in registers, the residual sum in the dequantizing pass); elsewhere a sequence of
// portable row functions computes the same formulas.
#pragma once

#include <cstdint>

namespace topserve::engine {

// The activation applied to a dense layer's output (fused into oneDNN's fp32/bf16 matmul as a
// post-op, or into the int8 output pass).
enum class Epilogue { kNone, kGeluErf, kGeluTanh, kRelu, kTanh };

// int8 activations of M rows of K values: row i is s_i (q[i, :] - z_i), q in [0, 255], with
// scale[i] = s_i and shift[i] = s_i z_i. Made by QuantizeRows or by a Linear's fused epilogue, so
// the next int8 layer reads them without another pass over fp32 memory.
struct QuantizedRows {
  uint8_t* q = nullptr;    // [M x K]
  float* scale = nullptr;  // [M]
  float* shift = nullptr;  // [M]
};

// Quantizes m rows of x [m x k] per row (range widened to include 0, so 0 is exact).
void QuantizeRows(const float* x, int64_t m, int64_t k, const QuantizedRows& out);

// y = LayerNorm(v + residual) * gamma + beta, the residual connection fused into an int8 layer's
// output pass.
struct ResidualNorm {
  const float* residual = nullptr;  // [m x n]
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float eps = 0.0f;
};

// Where an int8 layer's result rows go. Each row is dequantized (scales, zero point, bias,
// activation), then normed with `norm` when set, then written to any of y (fp32), bf16 and
// quantized (the next int8 layer's input) while it is in L1: the int32 -> fp32 matmul output is the
// only whole-matrix pass.
struct Int8Output {
  float* y = nullptr;        // [m x n] fp32, or null
  uint16_t* bf16 = nullptr;  // [m x n] bf16 (nearest even), or null
  // bf16 as this many planes [m x n/planes] side by side in memory (column block p of row i at
  // bf16 + (p m + i) n/planes): Q, K and V apart, so attention reads them as dense matrices.
  int64_t bf16_planes = 1;
  const QuantizedRows* quantized = nullptr;  // [m x n] per-row u8, or null
  const ResidualNorm* norm = nullptr;        // applied before the writes above, or null
};

// One int8 layer's result rows and what makes them real numbers: row i of the matmul result, d_i,
// holds w_scale_j sum_c q_ic w_cj, so x_i . w_j = s_i d_ij - s_i z_i colsum_j.
struct Int8Rows {
  const QuantizedRows* in = nullptr;  // the layer's input: scale s_i and shift s_i z_i per row
  const float* w_colsum = nullptr;    // [n] w_scale_j x the sum of column j's int8 weights
  const float* bias = nullptr;        // [n]
  Epilogue epilogue = Epilogue::kNone;
  bool accumulate = false;  // add out.y's old row before the activation (oneDNN's sum post-op)
  int64_t m = 0;            // rows of the whole output (the bf16 planes' height)
  int64_t n = 0;            // columns
};

// The output pass over rows [begin, begin + rows) of an m-row output, in parallel on the calling
// thread's OpenMP team. d holds those rows' matmul results (row i at d + (i - begin) n); it may be
// out.y's own rows (then the result replaces them) and is otherwise left as scratch. Per row:
//   v = act(s_i d_i - shift_i colsum + bias (+ y_i when accumulating)), then
//   v = LayerNorm(v + residual_i) when out.norm is set,
// and v goes to out.y, out.bf16 and out.quantized, whichever are set.
// kPortable forces the portable functions on any CPU (tests compare the two; results agree to
// float rounding, codes within one step).
enum class RowKernel { kBest, kPortable };
void FinishInt8Rows(const Int8Rows& layer, float* d, int64_t begin, int64_t rows,
                    const Int8Output& out, RowKernel kernel = RowKernel::kBest);

// Rounds k floats to bf16 (nearest even, NaN stays NaN); `native` uses the CPU's AVX512-BF16
// conversion (the caller checks that the CPU has it), otherwise portable code.
void ToBf16Row(const float* x, int64_t k, bool native, uint16_t* out);

// Row i of m rows of n floats rounded to bf16 into `planes` planes [m x n/planes] (Int8Output's
// bf16_planes layout; one plane is a plain row-major copy).
void RowToBf16Planes(const float* row, int64_t i, int64_t m, int64_t n, int64_t planes, bool native,
                     uint16_t* out);

}  // namespace topserve::engine
