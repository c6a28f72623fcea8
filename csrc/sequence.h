// The time loop of one layer in one direction, forward and backward, written once for every
// device. A Backend supplies, all on the current device/stream:
//   gemm(m, n, k, A, lda, B, ldb, beta, C, ldc)                   row-major C[m,n] = A B + beta C
//   pack_weight<scalar_t>(w, block, rows, products, roll) -> Tensor  its own copy of a weight
//                                                                  [K, N], any strides, for
//                                                                  `products` products over
//                                                                  `rows` rows in all, which
//                                                                  gemm_weight then reads (or
//                                                                  undefined: none, it reads
//                                                                  w); `roll` (kRollInPlace):
//                                                                  its rows as w.roll(roll, 0)
//                                                                  has them
//   gemm_weight(m, c0, c1, A, lda, Weight, beta, C, ldc, bias)     columns [c0, c1) of A W
//                                                                  (+ bias: CPU only)
//   copy(dst, src, count)                                          contiguous copy
//   copy_cols(dst, src, rows, col_begin, col_end, ld)              the same columns of [rows, ld]
//   pointwise(functor, rows, col_begin, col_end)                   functor.apply over that block
//   plan(schedule, dims) -> std::vector<Part>                      how to share out a layer
//   for_each_part(parts, fn)                                       fn(part, sync) for each part;
//                                                                  unit parts call
//                                                                  sync(SharedUnits) to meet
//   project_input<scalar_t>(x, w_ih, bias, out)                    out = x W_ih^T + bias, all steps
//   kStepProjection, project_in_loop(schedule, dims, x)            whether to project x inside
//                                                                  the loop (StepProjection)
//   kFoldRecurrent                                                 whether a step's h W_hh^T
//                                                                  adds itself onto x_t's
//                                                                  projection (forward_loop)
//   kLaneRecurrent; where true also                                whether tiny layers' steps
//   lanes_hold_rows<scalar_t>(H), recurrent_lanes<scalar_t>(w, H)  make their recurrent
//                                                                  products in the pointwise
//                                                                  step (lane_recurrent)
//   grad_weight<scalar_t>(dgates, inputs, out),
//   grad_input<scalar_t>(dgates, w, input, batch_first),
//   column_sums<scalar_t>(dgates)                                  after the loop
//   concurrently(product, a, b)                                    a() and b(), independent,
//                                                                  at once where it pays
//   kStepGradients; where true also                                whether to sum the weight,
//   gradients_in_loop(schedule, dims, parts, x),                   bias and input gradients
//   step_gradients_size(dims), run_gradients(dims, part, buffers,  inside the backward loop
//   run), finish_gradients<scalar_t>(dims, g, sums)                (StepGradients), and how
//   empty(sizes, options), contiguous(t), row_major<scalar_t>(w)   its buffers, its copies
//   fused_forward<scalar_t>(s, d, reverse, train, ForwardBuffers)  the whole loop run its own way
//   fused_backward<scalar_t>(s, d, reverse, BackwardBuffers)       (true), or not (false: the
//                                                                  loops below, step by step)
// Everything else outside the loop is a handful of ATen calls, which run on either device.
//
// Variable lengths: rows are sorted by length, longest first (a PackedSequence's order), and
// step t works on the first batch_sizes[t] rows only, so the cost follows the token count.
// The state buffers h_state/c_state hold one row per sequence; a row that has stopped keeps its
// final state there (h_n at the sequence's own last step), and in the reverse direction a row
// starts from h0 at its own last step because nothing has touched it before. The same holds for
// the gradient states in the backward loop.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/roll.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cells.h"

namespace fused_rnn {

// The per-step schedule: how many rows are active and where the step's rows start.
struct Schedule {
  std::vector<int64_t> rows;    // active rows at time t
  std::vector<int64_t> offset;  // first row of step t in the [N, *] time-major buffers
  int64_t T = 0, B = 0, N = 0;

  // Processing order of the forward pass (reversed for backward).
  int64_t step(int64_t s, bool reverse) const { return reverse ? T - 1 - s : s; }
};

// The same schedule where a device reads it (cuda/block_loop.cuh): rows and offsets as arrays.
struct ScheduleView {
  const int64_t* rows;
  const int64_t* offset;
  int64_t T, B, N;

  FR_HD int64_t step(int64_t s, bool reverse) const { return reverse ? T - 1 - s : s; }
};

Schedule make_schedule(const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
                       int64_t batch);

// Sizes of one layer-direction and the layout of its flat workspace.
struct LayerDims {
  Mode mode;
  int64_t I, H, P, G;  // input size, hidden size, state size (proj_size or H), gate rows (G*H)
  bool proj;

  FR_HD int64_t saved_cols() const { return saved_of(mode) * H; }
  // Per time-major row of the workspace: saved gates | h_{t-1} | c_{t-1} (LSTM) | r (projected)
  FR_HD int64_t ws_cols() const {
    return saved_cols() + P + (mode == Mode::LSTM ? H : 0) + (proj ? H : 0);
  }
};

LayerDims layer_dims(Mode mode, const at::Tensor& w_ih, const at::Tensor& w_hh,
                     const c10::optional<at::Tensor>& w_hr);

template <class scalar_t>
struct WorkspaceView {
  scalar_t* gates;
  scalar_t* h_prev;
  scalar_t* c_prev;
  scalar_t* r;

  // Each part is its own [N, cols] block, one after another, in the order of ws_cols().
  FR_HD WorkspaceView(scalar_t* base, const LayerDims& d, int64_t N) {
    gates = base;
    h_prev = gates + N * d.saved_cols();
    c_prev = h_prev + N * d.P;
    r = c_prev + (d.mode == Mode::LSTM ? N * d.H : 0);
  }
};

// The rows of a layer's input as the CPU's products read them in place: an [N, K] matrix,
// or a [T, B, K] input that may be a view (a batch-first tensor transposed to time-major), as
// `blocks` blocks of `rows` rows, row r of block t at t * st + r * sb, elements contiguous.
// (Copying the toxic model's transposed [150, 32, 3] input took ATen 28 us, twice per step.)
struct RowBlocks {
  int64_t blocks, rows, st, sb;

  // None where the elements of a row are not contiguous.
  static c10::optional<RowBlocks> of(const at::Tensor& t) {
    if (t.size(-1) > 1 && t.stride(-1) != 1) return c10::nullopt;
    if (t.dim() == 2) return RowBlocks{1, t.size(0), 0, t.stride(0)};
    if (t.dim() == 3 && t.stride(0) == t.size(1) * t.stride(1)) {  // evenly spaced: one block
      return RowBlocks{1, t.size(0) * t.size(1), 0, t.stride(1)};
    }
    if (t.dim() == 3) return RowBlocks{t.size(0), t.size(1), t.stride(0), t.stride(1)};
    return c10::nullopt;
  }
  // Element offset of time-major row r.
  int64_t offset_of(int64_t r) const { return r / rows * st + r % rows * sb; }
  // fn(n, offset, count) for each run of rows [begin, end) (time-major row numbers) that lies
  // within one block: rows n .. n + count - 1, the first at element `offset`.
  template <class Fn>
  void segments(int64_t begin, int64_t end, const Fn& fn) const {
    while (begin < end) {
      const int64_t t = begin / rows, r = begin - t * rows;
      const int64_t count = std::min(end, (t + 1) * rows) - begin;
      fn(begin, t * st + r * sb, count);
      begin += count;
    }
  }
};

// A recurrent weight, [K, N] row-major (W_hh^T in the forward pass, W_hh in the backward), as
// the per-step GEMMs multiply by it: `packed` is the backend's copy made once per call (CPU:
// column strips, so that every step streams it sequentially), null if it has none. Columns
// come in blocks of `block` (a gate's units forward, the state backward); unit parts use
// column ranges within one block, starting at a multiple of the backend's alignment. `ldt`: 0,
// or (CPU, unpacked) `data` is the weight as torch stores it, [N, K] rows `ldt` apart, read in
// place.
// `roll`: 0, or (CPU, unpacked, row-major) `data` holds the rows of the weight that the
// products mean rolled back by `roll` (their row k is data's row (k - roll) mod K, as
// torch.roll(data, roll, 0) would place it): GRU's W_hh, read in place by the backward.
// `half`: null, or (CPU, kHalfWeights) in place of `data`, a fp32 layer's weight in fp16 or bf16
// (`half_type`) as the fp16/bf16 ops keep it, read where it is (`ldt` and `roll` as for data).
// `descending`: a product may take the columns last to first (in_step_order).
template <class scalar_t>
struct Weight {
  const scalar_t* data;
  const scalar_t* packed;
  int64_t K, N, block;
  int64_t ldt = 0;
  int64_t roll = 0;
  const void* half = nullptr;
  c10::ScalarType half_type = c10::ScalarType::Undefined;
  bool descending = false;
  // Its size as the backends' thresholds count it (K x N elements of scalar_t).
  FR_HD int64_t bytes() const { return K * N * int64_t(sizeof(scalar_t)); }
};

// The recurrent weight as a loop's product at processing step `step` takes it: every other
// step's columns last to first, so that each step starts on the ones the step before read last,
// still in cache, where a weight that outgrows the cache would otherwise come from the next
// level whole on every step (a least-recently-used cache keeps none of a stream larger than
// itself). Each element of the product is the same sum either way. (Backends may take no notice:
// the CPU's honours it on its packed weights above kL2ResidentBytes.)
template <class scalar_t>
FR_HD Weight<scalar_t> in_step_order(Weight<scalar_t> w, int64_t step) {
  w.descending = step % 2 == 1;
  return w;
}

// A weight [K, N] (any strides) held for one call as the products read it: the backend's
// packed copy where it makes one, else its row-major copy of the view (a no-op if it is one).
template <class scalar_t>
struct HeldWeight {
  at::Tensor data, packed;
  int64_t K = 0, N = 0, block = 0, roll = 0;
  Weight<scalar_t> view() const {
    // A transposed view that the backend kept as it is (row_major), possibly in fp16 / bf16.
    const bool transposed = data.defined() && data.stride(0) == 1 && data.stride(1) != 1;
    const bool half =
        data.defined() && data.scalar_type() != c10::CppTypeToScalarType<scalar_t>::value;
    return {data.defined() && !half ? data.const_data_ptr<scalar_t>() : nullptr,
            packed.defined() ? packed.const_data_ptr<scalar_t>() : nullptr,
            K,
            N,
            block,
            transposed ? data.stride(1) : 0,
            data.defined() ? roll : 0,
            half ? data.const_data_ptr() : nullptr,
            half ? data.scalar_type() : c10::ScalarType::Undefined};
  }
};

// `rows`: how many rows the call's products multiply by it in all, in `products` products (a
// product per step, or one over all rows). `roll`: the products read w.roll(roll, 0) (GRU's
// backward: W_hh's gate rows in the order n, r, z). Backends with kRollInPlace pack the rows
// in that order or read them where they are (Weight::roll); the others get the rolled copy.
template <class Backend, class scalar_t>
HeldWeight<scalar_t> hold_weight(const at::Tensor& w, int64_t block, int64_t rows,
                                 int64_t products, int64_t roll = 0) {
  if (roll != 0 && !Backend::kRollInPlace) {
    return hold_weight<Backend, scalar_t>(w.roll(roll, 0), block, rows, products);
  }
  at::Tensor packed = Backend::template pack_weight<scalar_t>(w, block, rows, products, roll);
  at::Tensor data = packed.defined() ? at::Tensor() : Backend::template row_major<scalar_t>(w);
  return {std::move(data), std::move(packed), w.size(0), w.size(1), block, roll};
}

// The recurrent weight as hold_weight holds it for a loop's per-step products, one per step
// over the step's rows, except processing step 0's where `skip_first` (its `rows0` rows make
// none): an empty one where no step makes any (T = 1).
template <class Backend, class scalar_t>
HeldWeight<scalar_t> hold_recurrent(const at::Tensor& w, int64_t block, const Schedule& s,
                                    int64_t rows0, bool skip_first, int64_t roll = 0) {
  if (skip_first && s.T == 1) return {};
  return hold_weight<Backend, scalar_t>(w, block, s.N - (skip_first ? rows0 : 0),
                                        s.T - (skip_first ? 1 : 0), roll);
}

// The products outside the loop as ATen calls (cuBLAS, or the CPU's BLAS for large layers).
// x / inputs: the layer's input ([T, B, I], possibly a view, or packed [N, I]) or an [N, K]
// matrix; dgates [N, G] may be a column block of a wider matrix.
inline void aten_project_input(const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& bias, at::Tensor& out) {
  const at::Tensor x2d = x.reshape({out.size(0), x.size(-1)});
  if (bias.defined()) {
    at::addmm_out(out, bias, x2d, w_ih.t());
  } else {
    at::mm_out(out, x2d, w_ih.t());
  }
}
// out: [G, K], contiguous (a block of rows of a larger one).
inline void aten_grad_weight(const at::Tensor& dgates, const at::Tensor& inputs, at::Tensor out) {
  at::mm_out(out, dgates.t(), inputs.reshape({dgates.size(0), inputs.size(-1)}));
}
// dW [G, K] = dgates^T inputs (dgates [N, G], inputs as grad_weight takes them), its rows
// rolled back by `roll`: GRU's dW_hh from the gate gradients in the order n, r, z, in W_hh's
// order r, z, n. Two products, each into its own rows, instead of a rolled copy of the whole
// gradient (at I = H = 1024 a copy of 12 MB: ~1 ms per call on this CPU).
template <class Backend, class scalar_t>
at::Tensor weight_gradient(const at::Tensor& dgates, const at::Tensor& inputs, int64_t roll = 0) {
  const int64_t G = dgates.size(1);
  at::Tensor out = Backend::empty({G, inputs.size(-1)}, dgates.options());
  if (roll == 0) {
    Backend::template grad_weight<scalar_t>(dgates, inputs, out);
  } else {
    Backend::template grad_weight<scalar_t>(dgates.narrow(1, roll, G - roll), inputs,
                                            out.narrow(0, 0, G - roll));
    Backend::template grad_weight<scalar_t>(dgates.narrow(1, 0, roll), inputs,
                                            out.narrow(0, G - roll, roll));
  }
  return out;
}

// Processing step 0 (t = 0, or T - 1 in reverse) starts each of its `rows` rows from h0, the
// first rows of hx. Where those are all zeros (a module called without hx passes zeros) the
// step's recurrent product h0 W_hh^T is zero, and so is its rows' share dgates^T h_prev of
// dW_hh: both are left out (a backend with kZeroFirstState, where zero_state_pays).
// Exactly: 0 * inf and 0 * NaN are NaN, which the products would give, so only where the other
// factor, `m` ([m_rows, m_cols], rows `ld` apart: W_hh forward, those rows' recurrent gate
// gradients backward), is finite. `reuse`: the multiply-adds of the product left out per
// element of m (forward: the rows; backward: P); `steps`: T. A whole step of products for two
// scans: at T = 1, B = 256, I = H = 256 (hx=None) the forward does half the multiply-adds
// torch.nn's does, the backward two thirds. (m_t: scalar_t, or a fp16 / bf16 weight of a fp32
// layer, kHalfWeights.)
template <class Backend, class scalar_t, class m_t = scalar_t>
bool first_state_zero(int64_t rows, const scalar_t* h0, int64_t P, const m_t* m,
                      int64_t m_rows, int64_t m_cols, int64_t ld, int64_t reuse, int64_t steps) {
  if constexpr (Backend::kZeroFirstState) {
    return Backend::zero_state_pays(reuse, steps, m_rows * m_cols * int64_t(sizeof(scalar_t))) &&
           Backend::all_zero(h0, rows * P) && Backend::all_finite(m, m_rows, m_cols, ld);
  } else {
    return false;
  }
}

// The shape of the input's gradient: `input`'s ([T, B, I] or packed [N, I]), or with
// `batch_first` that of the [B, T, I] tensor a [T, B, I] `input` is the transposed view of.
inline std::vector<int64_t> input_grad_shape(const at::Tensor& input, bool batch_first) {
  std::vector<int64_t> shape = input.sizes().vec();
  if (batch_first) std::swap(shape[0], shape[1]);
  return shape;
}
// Where the time-major rows of a contiguous input gradient (input_grad_shape) lie.
inline RowBlocks input_grad_rows(const at::Tensor& grad, bool batch_first) {
  return *RowBlocks::of(batch_first ? grad.transpose(0, 1) : grad);
}

// Contiguous, shaped as input_grad_shape says.
inline at::Tensor aten_grad_input(const at::Tensor& dgates, const at::Tensor& weight,
                                  const at::Tensor& input, bool batch_first) {
  at::Tensor grad = at::mm(dgates, weight).view(input.sizes());
  return batch_first ? grad.transpose(0, 1).contiguous() : grad;
}

// Bias folded into the input projection, contiguous: b_ih + b_hh, except GRU's n gate whose
// b_hh part stays inside r * (W_hn h + b_hn).
at::Tensor input_bias(Mode mode, const c10::optional<at::Tensor>& b_ih,
                      const c10::optional<at::Tensor>& b_hh, int64_t H);

// A contiguous copy of `t` (the states the loop updates in place). On the CPU a memcpy: ATen's
// clone costs ~1 us there, more than copying a small model's states.
at::Tensor contiguous_copy(const at::Tensor& t);

// One share of a layer's time loop: rows [begin, end) of the batch and hidden units
// [u_begin, u_end). A backend may run several parts at once (the CPU does, one per thread):
//  * row parts (all units each) never interact: each runs the whole time loop on its rows; the
//    per-row buffers (states, scratch) are indexed by absolute row, the time-major buffers by
//    offset;
//  * unit parts (all rows, a slice of the units each, `units_split`) each read only their slice
//    of the recurrent weight per step, but every step's GEMM reads all units of the previous
//    state (forward) or gate gradient (backward), so the parts meet once per step (`sync`).
//    Not for projected LSTMs (their state is W_hr's output, not per unit).
struct Part {
  int64_t begin, end;      // rows
  int64_t u_begin, u_end;  // hidden units
  bool units_split = false;
  int64_t index = 0;  // in the plan
  // Rows of this part active at step t, and where they start in the time-major buffers.
  // (S: Schedule, or ScheduleView on a device.)
  template <class S>
  FR_HD int64_t rows(const S& s, int64_t t) const {
    const int64_t active = s.rows[t] < end ? s.rows[t] : end;
    return active > begin ? active - begin : 0;
  }
  template <class S>
  FR_HD int64_t offset(const S& s, int64_t t) const { return s.offset[t] + begin; }
};

// What a unit part reads of the other parts' units just after they meet (`sync`): `rows` rows
// `ld` apart, `cols` columns each in blocks of `block` (the forward: h_{t-1}, one block of P;
// the backward: the gate gradients, G in blocks of H). A backend may fetch the lines the others
// wrote at once (the CPU does), where the step's product would meet them one at a time.
template <class scalar_t>
struct SharedUnits {
  const scalar_t* data;
  int64_t rows, ld, cols, block;
};

// At most `parts` row parts of about equal token counts (rows are sorted by length, so equal
// row counts would give the first part all the long sequences).
std::vector<Part> split_rows(const Schedule& s, const LayerDims& d, int64_t parts);
// `parts` unit parts, their boundaries multiples of `align` units.
std::vector<Part> split_units(const Schedule& s, const LayerDims& d, int64_t parts, int64_t align);

// This part's columns of C [m, G] = A W (beta 0): its units of every gate (unit parts), or all
// G. `bias...`: the CPU's bias for gemm_weight, or nothing.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // host backends' calls in the host instantiations
#endif
template <class Backend, class scalar_t, class... Bias>
FR_LOOP void gemm_part(const Part& part, const LayerDims& d, int64_t m, const scalar_t* A,
                       int64_t lda, const Weight<scalar_t>& w, scalar_t beta, scalar_t* C,
                       Bias... bias) {
  if (!part.units_split) {
    Backend::gemm_weight(m, 0, d.G, A, lda, w, beta, C, d.G, bias...);
    return;
  }
  const int64_t gates = d.G / d.H;
  for (int64_t i = 0; i < gates; ++i) {
    const int64_t g = (w.descending ? gates - 1 - i : i) * d.H;
    Backend::gemm_weight(m, g + part.u_begin, g + part.u_end, A, lda, w, beta, C, d.G,
                         bias...);
  }
}

// The input projection inside the loop (backends with kStepProjection, where
// project_in_loop says so), where it would otherwise need an [N, G] buffer of its own (without
// training; GRU in training): each part projects its own rows and units of a chunk of steps
// into a small ring buffer just before it runs them, so the step reads x_t W_ih^T + bias from
// cache, and the buffer is never allocated (at 50 x 256 x 4H = 13M floats, its page faults
// alone cost 20 ms a call). With training, LSTM and RNN write the projection into the
// workspace, which is there anyway: one product before the loop, as before.
// x: the layer's input, its rows as `rows` says; w: W_ih^T [I, G] (blocks of H columns); bias
// [G] (input_bias) or null; chunk: elements of x W_ih^T per chunk (at least one step); ring:
// [parts][ring_rows, G], each part's chunk in time order.
template <class scalar_t>
struct StepProjection {
  const scalar_t* x;
  RowBlocks rows;
  Weight<scalar_t> w;
  const scalar_t* bias;
  int64_t chunk;
  scalar_t* ring;
  int64_t ring_rows;
};

// Rows of a part's chunk at most: chunk / the part's columns, or one step's rows.
inline int64_t chunk_rows(const LayerDims& d, const Part& part, int64_t chunk) {
  const int64_t cols = part.units_split ? (part.u_end - part.u_begin) * (d.G / d.H) : d.G;
  return std::max(chunk / std::max<int64_t>(cols, 1), part.end - part.begin);
}

// Projects the chunk of steps that starts at processing step `first` for `part`; sets xg_at[t]
// for its steps; returns the processing step after it.
template <class Backend, class scalar_t>
int64_t project_chunk(const Schedule& s, const LayerDims& d, bool reverse, const Part& part,
                      const StepProjection<scalar_t>& p, int64_t first, scalar_t** xg_at) {
  const int64_t G = d.G, cap = chunk_rows(d, part, p.chunk);
  int64_t end = first, total = 0;
  for (; end < s.T; ++end) {
    const int64_t n = part.rows(s, s.step(end, reverse));
    if (end > first && total + n > cap) break;
    total += n;
  }
  const int64_t t_lo = std::min(s.step(first, reverse), s.step(end - 1, reverse));
  const int64_t t_hi = std::max(s.step(first, reverse), s.step(end - 1, reverse));
  scalar_t* ring = p.ring + part.index * p.ring_rows * G;
  // Where each step's rows go, in time order; whether they are one run of time-major rows (the
  // part has all rows of every step but the last) with x's rows evenly spaced (one block).
  bool one_run = p.rows.blocks == 1;
  int64_t pos = 0;
  for (int64_t t = t_lo; t <= t_hi; ++t) {
    xg_at[t] = ring + pos * G;
    pos += part.rows(s, t);
    if (t < t_hi && part.rows(s, t) != s.rows[t]) one_run = false;
  }
  auto product = [&](int64_t m, int64_t t) {  // m rows from step t's first
    gemm_part<Backend>(part, d, m, p.x + p.rows.offset_of(part.offset(s, t)), p.rows.sb, p.w,
                       scalar_t(0), xg_at[t], p.bias);
  };
  if (one_run) {
    product(pos, t_lo);
  } else {
    for (int64_t t = t_lo; t <= t_hi; ++t) product(part.rows(s, t), t);
  }
  return end;
}

// Whether forward_loop adds each step's h_{t-1} W_hh^T onto x_t's projection (no hg buffer):
// LSTM only (LSTMForward reads a null hg). GRU keeps the product apart (r multiplies its n
// part); a plain RNN's step is so short that its xg loads, issued early by the pointwise step,
// were off the critical path, and folded they wait at the product's end (the 2-layer seed
// RNN's forward 0.432 -> 0.463 ms).
template <class Backend>
FR_HD bool folds_recurrent(const LayerDims& d) {
  return Backend::kFoldRecurrent && d.mode == Mode::LSTM;
}

// Whether the pointwise step makes the step's recurrent product itself, in registers
// (lane_product, cells.h), from the weight as the backend's lanes (recurrent_lanes): for layers
// so small (the CPU: H up to half a lane, where a lane holds whole rows) that a product call
// per step cost more than its arithmetic, and the functor's loads waited on the product's
// stores. Every mode; not projected LSTMs; row parts only (a unit part's lanes hold some of a
// row's units, not all).
// Returns the lanes of `w` (W_hh^T forward, W_hh backward), or an undefined tensor where the
// loop makes the products.
template <class Backend, class scalar_t>
at::Tensor lane_recurrent(const at::Tensor& w, const LayerDims& d, const std::vector<Part>& parts) {
  if constexpr (Backend::kLaneRecurrent) {
    if (!d.proj && !parts[0].units_split && Backend::template lanes_hold_rows<scalar_t>(d.H)) {
      return Backend::template recurrent_lanes<scalar_t>(w, d.H);
    }
  }
  return at::Tensor();
}

// The buffers of one layer's forward loop (each part offsets them by its rows).
// `hp_scratch`: [2, B, P], for unit parts without training (the previous state each step,
// double-buffered); otherwise unused.
template <class scalar_t>
struct ForwardBuffers {
  scalar_t* xproj;                              // [N, G], or null with a step projection
  const StepProjection<scalar_t>* step_proj;    // host only
  Weight<scalar_t> w_hh_t;                      // [P, G]
  const scalar_t* w_hr_t;                       // [H, P] (projected)
  const scalar_t* b_hn;                         // GRU's b_hh n part, or null
  scalar_t* output;                             // [N, P]
  scalar_t* h_state;                            // [B, P]
  scalar_t* c_state;                            // [B, H] (LSTM)
  scalar_t* c_all;                              // [N, H] (cell_states)
  scalar_t* hg;                                 // [B, G], or null (folds_recurrent)
  scalar_t* r_scratch;                          // [B, H] (projected, no training)
  scalar_t* hp_scratch;
  WorkspaceView<scalar_t> ws;
  bool zero_h0 = false;  // h0 W_hh^T is zero (first_state_zero): processing step 0 skips it
  const scalar_t* w_lanes = nullptr;  // W_hh^T as lanes (lane_recurrent), or null
};

// x_t W_ih^T + bias of a chunk's steps, for backends that project inside the loop.
template <class scalar_t, bool InLoop>
struct StepPointers {
  std::vector<scalar_t*> at;
  explicit StepPointers(int64_t T) : at(T) {}
  scalar_t* operator[](int64_t t) const { return at[t]; }
  scalar_t** data() { return at.data(); }
};
template <class scalar_t>
struct StepPointers<scalar_t, false> {
  FR_HD explicit StepPointers(int64_t) {}
  FR_HD scalar_t* operator[](int64_t) const { return nullptr; }
};

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Backend, class scalar_t, bool Train, class Sched, class Sync>
FR_LOOP void forward_loop(const Sched& s, const LayerDims& d, bool reverse, Part part, Sync& sync,
                          const ForwardBuffers<scalar_t>& b) {
  const int64_t H = d.H, P = d.P, G = d.G;
  const int64_t u0 = part.u_begin, u1 = part.u_end;
  const WorkspaceView<scalar_t>& ws = b.ws;
  scalar_t* h_state = b.h_state + part.begin * P;
  scalar_t* c_state = b.c_state ? b.c_state + part.begin * H : nullptr;
  // h_{t-1} W_hh^T: added onto x_t's projection by the product itself where the backend folds
  // it (folds_recurrent; the pointwise step then reads one [n, G] block, which the product has
  // just brought into cache, where it read two; hg is null), else into hg.
  const bool fold = folds_recurrent<Backend>(d);
  scalar_t* hg = b.hg ? b.hg + part.begin * G : nullptr;
  scalar_t* r_scratch = b.r_scratch ? b.r_scratch + part.begin * H : nullptr;
  const bool in_loop = Backend::kStepProjection && b.step_proj;
  StepPointers<scalar_t, Backend::kStepProjection> xg_at(in_loop ? s.T : 0);
  int64_t chunk_end = 0;
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = s.step(step, reverse);
    const int64_t n = part.rows(s, t), off = part.offset(s, t);
    if (n == 0) continue;
    if constexpr (Backend::kStepProjection) {
      if (in_loop && step >= chunk_end) {
        chunk_end = project_chunk<Backend>(s, d, reverse, part, *b.step_proj, step, xg_at.data());
      }
    }
    scalar_t* xg = in_loop ? xg_at[t] : b.xproj + off * G;
    // h_{t-1} for the recurrent GEMM: the state itself, saved for the backward pass in training.
    const scalar_t* h_prev = h_state;
    if (part.units_split) {
      // Each part copies its own units, then all read all of them: nobody writes the state
      // another part is still reading.
      scalar_t* buf = Train ? ws.h_prev + off * P : b.hp_scratch + (step % 2) * s.B * P;
      Backend::copy_cols(buf, h_state, n, u0, u1, P);
      h_prev = buf;
      sync(SharedUnits<scalar_t>{buf, n, P, P, P});
    } else if (Train) {
      Backend::copy(ws.h_prev + off * P, h_state, n * P);
    }
    if (!b.w_lanes && (step > 0 || !b.zero_h0)) {
      gemm_part<Backend>(part, d, n, h_prev, P, in_step_order(b.w_hh_t, step),
                         scalar_t(fold ? 1 : 0), fold ? xg : hg);
    }
    scalar_t* out = b.output + off * P;
    switch (d.mode) {
      case Mode::LSTM: {
        scalar_t* r = d.proj ? (Train ? ws.r + off * H : r_scratch) : out;
        LSTMForward<scalar_t, Train> f{xg, hg, c_state, r, d.proj ? nullptr : h_state,
                                       Train ? ws.gates + off * 4 * H : nullptr,
                                       Train ? ws.c_prev + off * H : nullptr,
                                       b.c_all ? b.c_all + off * H : nullptr, H, d.proj ? H : P,
                                       b.w_lanes};
        Backend::pointwise(f, n, u0, u1);
        if (d.proj) {
          Backend::gemm(n, P, H, r, H, b.w_hr_t, P, scalar_t(0), out, P);
          Backend::copy(h_state, out, n * P);
        }
        break;
      }
      case Mode::GRU: {
        GRUForward<scalar_t, Train> f{xg, hg, b.b_hn, h_state, out,
                                      Train ? ws.gates + off * 4 * H : nullptr, H, b.w_lanes};
        Backend::pointwise(f, n, u0, u1);
        break;
      }
      case Mode::RNN_TANH:
      case Mode::RNN_RELU: {
        scalar_t* saved = Train ? ws.gates + off * H : nullptr;
        if (d.mode == Mode::RNN_RELU) {
          Backend::pointwise(RNNForward<scalar_t, Train, true>{xg, hg, h_state, out, saved, H, b.w_lanes}, n, u0, u1);
        } else {
          Backend::pointwise(RNNForward<scalar_t, Train, false>{xg, hg, h_state, out, saved, H, b.w_lanes}, n, u0, u1);
        }
        break;
      }
    }
  }
}

template <class scalar_t>
struct StepGradients;

// The buffers of one layer's backward loop. `dgates` is [N, saved_cols] (see the backward
// functors in cells.h for its layout); its first G columns of each row are the gradient of the
// recurrent pre-activation, which meets `w_hh` (for GRU, with its gate rows rolled to the order
// n, r, z).
template <class scalar_t>
struct BackwardBuffers {
  Weight<scalar_t> w_hh;    // [G, P]
  const scalar_t* w_hr;     // [P, H] (projected)
  WorkspaceView<scalar_t> ws;
  const scalar_t* dout;     // [N, P]
  const scalar_t* dc_all;   // [N, H] or null
  scalar_t* dh_state;       // [B, P]
  scalar_t* dc_state;       // [B, H] (LSTM)
  scalar_t* dgates;         // [N, saved_cols]
  scalar_t* dh_all;         // [N, P] (projected)
  scalar_t* dr;             // [B, H] (projected)
  bool hx_grad;             // false: no dh_{t-1} product at the first step (nothing needs dh_0)
  const StepGradients<scalar_t>* step_grads;  // host only: the gradients inside the loop, or null
  const scalar_t* w_lanes = nullptr;  // W_hh as lanes (lane_recurrent), or null
};

// The weight and bias gradients inside the backward loop (backends with kStepGradients, where
// gradients_in_loop says so), and the input gradient with them: each row part adds its own
// rows' share into its own partial sums, a chunk of steps at a time, while those steps' gate
// gradients are still in cache. After the loop each of these products would stream all [N, S]
// gate gradients from memory again (IMDB's LSTM: 16 MB, four times); the parts' partial sums
// are added after it instead.
// x: the layer's input, its rows as `rows` says; w_ih: W_ih [G, I] as dx = dgates_x W_ih reads
// it; grad_input: its rows as `gi_rows` says (time-major [N, I], or a batch-first gradient's
// time-major view), or null (not wanted); sums: [parts][sums_size] zeros,
// laid out as the backend's run_gradients and finish_gradients agree; chunk: gate-gradient
// elements per chunk (at least one step's); sum_x / sum_h: the column sums of the input side's /
// the recurrent side's gate gradients (the bias gradients) are wanted.
template <class scalar_t>
struct StepGradients {
  const scalar_t* x;
  RowBlocks rows;
  Weight<scalar_t> w_ih;
  scalar_t* grad_input;
  RowBlocks gi_rows;
  scalar_t* sums;
  int64_t sums_size;
  int64_t chunk;
  bool sum_x, sum_h;
};

// Steps of a chunk whose rows the products take in one pass: `steps` steps of `rows` rows of one
// part each, the first at time-major row `off` (x's element x_off), each next one `d_off` rows
// (x: d_x elements) on.
struct GradientRun {
  int64_t steps, rows, off, x_off, d_off, d_x;
};

// The gradients of `part`'s rows at processing steps first down to last (backward order), as
// runs of evenly spaced steps with the same number of rows (all of a padded batch's steps; a
// packed batch's between the steps where sequences end).
template <class Backend, class scalar_t>
void gradient_chunk(const Schedule& s, const LayerDims& d, bool reverse, const Part& part,
                    const BackwardBuffers<scalar_t>& b, int64_t first, int64_t last) {
  const StepGradients<scalar_t>& g = *b.step_grads;
  GradientRun run{0, 0, 0, 0, 0, 0};
  for (int64_t step = first; step >= last; --step) {
    const int64_t t = s.step(step, reverse);
    const int64_t n = part.rows(s, t);
    if (n == 0) continue;
    const int64_t off = part.offset(s, t), x_off = g.rows.offset_of(off);
    if (run.steps > 0 && n == run.rows) {
      if (run.steps == 1) {
        run.d_off = off - run.off;
        run.d_x = x_off - run.x_off;
      }
      if (off == run.off + run.steps * run.d_off && x_off == run.x_off + run.steps * run.d_x) {
        ++run.steps;
        continue;
      }
    }
    if (run.steps > 0) Backend::run_gradients(d, part, b, run);
    run = GradientRun{1, n, off, x_off, 0, 0};
  }
  if (run.steps > 0) Backend::run_gradients(d, part, b, run);
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class Backend, class scalar_t, class Sched, class Sync>
FR_LOOP void backward_loop(const Sched& s, const LayerDims& d, bool reverse, Part part,
                           Sync& sync, const BackwardBuffers<scalar_t>& b) {
  const int64_t H = d.H, P = d.P, S = d.saved_cols();
  const int64_t u0 = part.u_begin, u1 = part.u_end;
  const WorkspaceView<scalar_t>& ws = b.ws;
  // The columns of dh_{t-1} this part computes: its units, or all P (projected: P != H).
  const int64_t dh_begin = part.units_split ? u0 : 0, dh_end = part.units_split ? u1 : P;
  scalar_t* dh_state = b.dh_state + part.begin * P;
  scalar_t* dc_state = b.dc_state ? b.dc_state + part.begin * H : nullptr;
  scalar_t* dr = b.dr ? b.dr + part.begin * H : nullptr;
  // Step gradients: the chunk not yet taken runs from processing step chunk_first down.
  int64_t chunk_first = -1, chunk_elements = 0;
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = s.step(step, reverse);
    const int64_t n = part.rows(s, t), off = part.offset(s, t);
    if (n == 0) continue;
    const scalar_t* dout_t = b.dout + off * P;
    scalar_t* dg = b.dgates + off * S;
    switch (d.mode) {
      case Mode::LSTM: {
        scalar_t* dh = dh_state;
        const scalar_t* dh_extra = dout_t;
        if (d.proj) {
          // dh_t = dh_state + dout; dr = dh_t W_hr; dh_t is kept for dW_hr after the loop.
          Backend::pointwise(AddInto<scalar_t>{dh_state, dout_t, b.dh_all + off * P, P}, n, 0, P);
          Backend::gemm(n, H, P, b.dh_all + off * P, P, b.w_hr, H, scalar_t(0), dr, H);
          dh = dr;
          dh_extra = nullptr;
        }
        LSTMBackward<scalar_t> f{ws.gates + off * 4 * H, ws.c_prev + off * H, dh, dh_extra,
                                 b.dc_all ? b.dc_all + off * H : nullptr, dc_state, dg, H,
                                 d.proj ? H : P, b.w_lanes};
        Backend::pointwise(f, n, u0, u1);
        break;
      }
      case Mode::GRU: {
        GRUBackward<scalar_t> f{ws.gates + off * 4 * H, ws.h_prev + off * P, dh_state, dout_t,
                                dg, H, b.w_lanes};
        Backend::pointwise(f, n, u0, u1);
        break;
      }
      case Mode::RNN_TANH:
      case Mode::RNN_RELU: {
        const scalar_t* saved = ws.gates + off * H;
        if (d.mode == Mode::RNN_RELU) {
          Backend::pointwise(RNNBackward<scalar_t, true>{saved, dh_state, dout_t, dg, H, b.w_lanes}, n, u0, u1);
        } else {
          Backend::pointwise(RNNBackward<scalar_t, false>{saved, dh_state, dout_t, dg, H, b.w_lanes}, n, u0, u1);
        }
        break;
      }
    }
    if constexpr (Backend::kStepGradients) {
      if (b.step_grads) {
        if (chunk_first < 0) chunk_first = step;
        chunk_elements += n * S;
        if (chunk_elements >= b.step_grads->chunk) {
          gradient_chunk<Backend>(s, d, reverse, part, b, chunk_first, step);
          chunk_first = -1;
          chunk_elements = 0;
        }
      }
    }
    // dh_0 only where hx's gradient is wanted (every part decides alike: no barrier is left).
    // With w_lanes the functor has made dh_{t-1} already.
    if ((step == 0 && !b.hx_grad) || b.w_lanes) continue;
    // dh_{t-1} (+)= dgates_h W_hh. GRU's functor has already written its direct z * dh_t part.
    // Unit parts: every part's gate gradients are read, for this part's units of dh_{t-1}.
    const scalar_t beta = d.mode == Mode::GRU ? scalar_t(1) : scalar_t(0);
    if (part.units_split) sync(SharedUnits<scalar_t>{dg, n, S, d.G, H});
    Backend::gemm_weight(n, dh_begin, dh_end, dg, S, in_step_order(b.w_hh, step), beta,
                         dh_state, P);
  }
  if constexpr (Backend::kStepGradients) {
    if (chunk_first >= 0) gradient_chunk<Backend>(s, d, reverse, part, b, chunk_first, int64_t(0));
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-level entry points shared by the CPU and CUDA registrations.

struct ForwardArgs {
  Mode mode;
  const at::Tensor& input;
  const c10::optional<at::Tensor>& batch_sizes;
  const at::Tensor& hx;
  const c10::optional<at::Tensor>& cx;
  const at::Tensor& w_ih;
  const at::Tensor& w_hh;
  const c10::optional<at::Tensor>& b_ih;
  const c10::optional<at::Tensor>& b_hh;
  const c10::optional<at::Tensor>& w_hr;
  bool reverse;
  bool train;
  bool cell_states;  // LSTM: also return c_t of every step
  // `input` is the time-major view of a [B, T, I] tensor, whose gradient is to come back
  // [B, T, I] (contiguous, as the op's fake kernel says).
  bool input_batch_first = false;
  // w_ih and w_hh may be fp16 or bf16 where everything else is fp32 (a backend with
  // kHalfWeights: its fp16/bf16 layers, whose products read the weights in place).
  bool half_weights = false;
};

// fn(w's elements): as scalar_t, or where the backend reads fp16 / bf16 weights of a fp32
// layer (kHalfWeights, ForwardArgs::half_weights) and w is one, as c10::Half / c10::BFloat16.
template <class Backend, class scalar_t, class Fn>
auto with_weight_data(const at::Tensor& w, const Fn& fn) {
  if constexpr (Backend::kHalfWeights && std::is_same_v<scalar_t, float>) {
    if (w.scalar_type() == at::kHalf) return fn(w.const_data_ptr<c10::Half>());
    if (w.scalar_type() == at::kBFloat16) return fn(w.const_data_ptr<c10::BFloat16>());
  }
  return fn(w.const_data_ptr<scalar_t>());
}

// Checks shared by forward and backward; returns the schedule and sizes.
std::tuple<Schedule, LayerDims> check_layer_args(const ForwardArgs& a);

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;

template <class Backend, class scalar_t>
ForwardResult layer_forward(const ForwardArgs& a) {
  auto [s, d] = check_layer_args(a);
  // The input as given (a batch-first model's is a transposed view): the backend reads it in
  // place or makes its own copy.
  const at::Tensor& x = a.input;
  at::Tensor h_state = contiguous_copy(a.hx);
  const int64_t rows0 = s.N > 0 ? s.rows[s.step(0, a.reverse)] : 0;  // processing step 0's
  const bool zero_h0 =
      s.N > 0 && a.w_hh.is_contiguous() &&
      with_weight_data<Backend, scalar_t>(a.w_hh, [&](const auto* w_hh) {
        return first_state_zero<Backend, scalar_t>(rows0, h_state.const_data_ptr<scalar_t>(),
                                                   d.P, w_hh, d.G, d.P, d.P, rows0, s.T);
      });
  // The recurrent weights transposed once per call, so that every per-step GEMM is A B with
  // both operands row-major ([P, G] and [H, P]).
  // The backend packs W_hh^T from the transposed view; the transposed copy is made only where
  // it does not (the CPU: weights that fit in L1; CUDA).
  // Tiny layers: the weight as lanes instead, for the pointwise step's own product.
  const std::vector<Part> parts = Backend::plan(s, d);
  const at::Tensor w_lanes = lane_recurrent<Backend, scalar_t>(a.w_hh.t(), d, parts);
  const bool lanes = w_lanes.defined();
  const HeldWeight<scalar_t> w_hh_t =
      lanes ? HeldWeight<scalar_t>{}
            : hold_recurrent<Backend, scalar_t>(a.w_hh.t(), d.H, s, rows0, zero_h0);
  const at::Tensor w_hr_t = d.proj ? a.w_hr->t().contiguous() : at::Tensor();
  auto opts = x.options();
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = d.P;
  at::Tensor output = Backend::empty(out_shape, opts);
  at::Tensor c_state =
      d.mode == Mode::LSTM ? contiguous_copy(*a.cx) : at::empty({0}, opts);
  at::Tensor workspace = Backend::empty({a.train ? s.N * d.ws_cols() : 0}, opts);
  std::vector<int64_t> cells_shape = x.sizes().vec();
  cells_shape.back() = d.H;
  at::Tensor cells = Backend::empty(a.cell_states ? cells_shape : std::vector<int64_t>{0}, opts);
  if (s.N == 0) return {output, h_state, c_state, cells, workspace};

  // One GEMM for the input projection of every step, biases folded in.
  const at::Tensor bias = input_bias(d.mode, a.b_ih, a.b_hh, d.H);
  // LSTM and RNN save exactly one value per gate row (the activated gate), at the position of
  // its pre-activation: in training the input projection is written into the workspace's gates
  // block and the step's functor overwrites it in place (each element reads its own row entries
  // before writing them), which saves an [N, G] buffer.
  const bool in_place = a.train && d.saved_cols() == d.G;
  c10::optional<StepProjection<scalar_t>> step_proj;
  HeldWeight<scalar_t> w_ih_t;
  at::Tensor ring;
  if constexpr (Backend::kStepProjection) {
    if (!in_place && Backend::project_in_loop(s, d, x)) {
      w_ih_t = hold_weight<Backend, scalar_t>(a.w_ih.t(), d.H, s.N, s.T);
      const int64_t chunk = Backend::kStepProjectionChunk;
      int64_t ring_rows = 0;
      for (const Part& p : parts) ring_rows = std::max(ring_rows, chunk_rows(d, p, chunk));
      ring = Backend::empty({int64_t(parts.size()) * ring_rows * d.G}, opts);
      step_proj = StepProjection<scalar_t>{
          x.const_data_ptr<scalar_t>(), *RowBlocks::of(x),
          w_ih_t.view(), bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, chunk,
          ring.data_ptr<scalar_t>(), ring_rows};
    }
  }
  // In place in the workspace, or one buffer for all steps (none with a step projection).
  at::Tensor xproj = in_place ? workspace.narrow(0, 0, s.N * d.G).view({s.N, d.G})
                              : Backend::empty({step_proj ? 0 : s.N, d.G}, opts);
  if (!step_proj) Backend::template project_input<scalar_t>(x, a.w_ih, bias, xproj);
  at::Tensor b_hn;
  if (d.mode == Mode::GRU && a.b_hh) b_hn = a.b_hh->narrow(0, 2 * d.H, d.H).contiguous();

  const int64_t hg_rows = folds_recurrent<Backend>(d) || lanes ? 0 : s.B;
  at::Tensor hg = zero_h0 ? at::zeros({hg_rows, d.G}, opts) : at::empty({hg_rows, d.G}, opts);
  at::Tensor r_scratch = at::empty({d.proj && !a.train ? s.B * d.H : 0}, opts);
  WorkspaceView<scalar_t> ws(workspace.data_ptr<scalar_t>(), d, s.N);
  at::Tensor hp_scratch =
      at::empty({!a.train && parts[0].units_split ? 2 * s.B * d.P : 0}, opts);
  const ForwardBuffers<scalar_t> buffers{
      xproj.data_ptr<scalar_t>(), step_proj ? &*step_proj : nullptr, w_hh_t.view(),
      d.proj ? w_hr_t.const_data_ptr<scalar_t>() : nullptr,
      b_hn.defined() ? b_hn.const_data_ptr<scalar_t>() : nullptr, output.data_ptr<scalar_t>(),
      h_state.data_ptr<scalar_t>(),
      d.mode == Mode::LSTM ? c_state.data_ptr<scalar_t>() : nullptr,
      a.cell_states ? cells.data_ptr<scalar_t>() : nullptr,
      hg.numel() ? hg.data_ptr<scalar_t>() : nullptr,
      r_scratch.numel() ? r_scratch.data_ptr<scalar_t>() : nullptr,
      hp_scratch.numel() ? hp_scratch.data_ptr<scalar_t>() : nullptr, ws, zero_h0,
      lanes ? w_lanes.const_data_ptr<scalar_t>() : nullptr};
  // The backend may run the whole loop as one kernel (CUDA, small layers); else step by step.
  if (!Backend::template fused_forward<scalar_t>(s, d, a.reverse, a.train, buffers)) {
    Backend::for_each_part(parts, [&](const Part& part, auto& sync) {
      if (a.train) {
        forward_loop<Backend, scalar_t, true>(s, d, a.reverse, part, sync, buffers);
      } else {
        forward_loop<Backend, scalar_t, false>(s, d, a.reverse, part, sync, buffers);
      }
    });
  }
  return {output, h_state, c_state, cells, workspace};
}

// `consume`: the gate gradients are written over the workspace's saved gates (as each step's
// gates are read, they are no longer needed), so the backward pass allocates no [N, G] buffer;
// the workspace cannot be used again afterwards. Without `input_grad` / `hx_grad` those
// gradients are zeros, their products skipped.
template <class Backend, class scalar_t>
BackwardResult layer_backward(const ForwardArgs& a, const at::Tensor& workspace,
                              const at::Tensor& grad_output, const at::Tensor& grad_hy,
                              const c10::optional<at::Tensor>& grad_cy,
                              const c10::optional<at::Tensor>& grad_cell_states, bool consume,
                              bool input_grad = true, bool hx_grad = true) {
  auto [s, d] = check_layer_args(a);
  TORCH_CHECK(workspace.numel() == s.N * d.ws_cols(),
              "fused_rnn: the workspace does not match this layer (was the forward run with "
              "train=False?)");
  const at::Tensor& x = a.input;
  auto opts = x.options();
  const std::vector<int64_t> input_shape = input_grad_shape(x, a.input_batch_first);
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = d.P;
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(out_shape), "fused_rnn: grad_output must be ",
              c10::IntArrayRef(out_shape), " (the output's shape), got ", grad_output.sizes());
  TORCH_CHECK(grad_hy.sizes() == a.hx.sizes(), "fused_rnn: grad_hy must be shaped like hx ",
              a.hx.sizes(), ", got ", grad_hy.sizes());
  TORCH_CHECK(d.mode != Mode::LSTM || (grad_cy && grad_cy->sizes() == a.cx->sizes()),
              "fused_rnn: grad_cy must be shaped like cx");
  const at::Tensor dout = Backend::contiguous(grad_output);
  at::Tensor dh_state = contiguous_copy(grad_hy);
  at::Tensor dc_state =
      d.mode == Mode::LSTM ? contiguous_copy(*grad_cy) : at::empty({0}, opts);
  at::Tensor dc_all;
  if (d.mode == Mode::LSTM && grad_cell_states && grad_cell_states->defined()) {
    out_shape.back() = d.H;
    TORCH_CHECK(grad_cell_states->sizes() == c10::IntArrayRef(out_shape),
                "fused_rnn: grad_cell_states must be ", c10::IntArrayRef(out_shape), ", got ",
                grad_cell_states->sizes());
    dc_all = Backend::contiguous(*grad_cell_states);
  }

  const bool gru = d.mode == Mode::GRU;
  // GRU's recurrent gate gradients come in the order n, r, z (cells.h): they meet W_hh's rows
  // rolled by H, and their products give dW_hh and db_hh rolled likewise.
  const int64_t roll = gru ? d.H : 0;
  const int64_t S = d.saved_cols();
  at::Tensor dgates = consume ? workspace.narrow(0, 0, s.N * S).view({s.N, S})
                              : Backend::empty({s.N, S}, opts);
  at::Tensor dh_all = Backend::empty({d.proj ? s.N : 0, d.P}, opts);
  at::Tensor dr = at::empty({d.proj ? s.B : 0, d.H}, opts);

  // Bias gradients: column sums of the gate gradients. Both biases of LSTM/RNN meet the same
  // pre-activation; GRU's b_hh meets the recurrent side (n gate inside r * (...)).
  const bool sum_input_side = a.b_ih || (a.b_hh && !gru);
  const std::vector<Part> parts = Backend::plan(s, d);
  // The weight, bias and input gradients inside the loop (StepGradients), or after it.
  c10::optional<StepGradients<scalar_t>> step_grads;
  HeldWeight<scalar_t> w_ih;
  at::Tensor sums, grad_input;
  if constexpr (Backend::kStepGradients) {
    if (s.N > 0 && Backend::gradients_in_loop(s, d, parts, x)) {
      const int64_t size = Backend::step_gradients_size(d);
      // From the backend's buffers (a pool on the CPU), then zeroed: at::zeros of MNIST-rows'
      // [2, 20224] faulted its pages in on every call (50 us of a ~6.3 ms training step).
      sums = Backend::empty({int64_t(parts.size()), size}, opts).zero_();
      RowBlocks gi_rows{1, s.N, 0, d.I};
      if (input_grad) {
        w_ih = hold_weight<Backend, scalar_t>(a.w_ih, d.I, s.N, s.T);
        grad_input = Backend::empty(input_shape, opts);
        gi_rows = input_grad_rows(grad_input, a.input_batch_first);
      }
      step_grads = StepGradients<scalar_t>{
          x.const_data_ptr<scalar_t>(), *RowBlocks::of(x), w_ih.view(),
          input_grad ? grad_input.data_ptr<scalar_t>() : nullptr, gi_rows,
          sums.data_ptr<scalar_t>(), size, Backend::kStepGradientChunk, sum_input_side,
          gru && a.b_hh.has_value()};
    }
  }
  // Processing step 0's rows: without hx_grad their dh_0 product is left out (backward_loop).
  const int64_t t0 = s.N > 0 ? s.step(0, a.reverse) : 0, rows0 = s.N > 0 ? s.rows[t0] : 0;
  if (s.N > 0) {
    const at::Tensor w_lanes = lane_recurrent<Backend, scalar_t>(a.w_hh, d, parts);
    const bool lanes = w_lanes.defined();
    const HeldWeight<scalar_t> w_hh =
        lanes ? HeldWeight<scalar_t>{}
              : hold_recurrent<Backend, scalar_t>(a.w_hh, d.P, s, rows0, !hx_grad, roll);
    const at::Tensor w_hr = d.proj ? a.w_hr->contiguous() : at::Tensor();
    // const_cast: without `consume` the workspace is only read; WorkspaceView serves both.
    WorkspaceView<scalar_t> ws(const_cast<scalar_t*>(workspace.const_data_ptr<scalar_t>()), d,
                               s.N);
    const BackwardBuffers<scalar_t> buffers{
        w_hh.view(), d.proj ? w_hr.const_data_ptr<scalar_t>() : nullptr, ws,
        dout.const_data_ptr<scalar_t>(),
        dc_all.defined() ? dc_all.const_data_ptr<scalar_t>() : nullptr,
        dh_state.data_ptr<scalar_t>(),
        d.mode == Mode::LSTM ? dc_state.data_ptr<scalar_t>() : nullptr,
        dgates.data_ptr<scalar_t>(), d.proj ? dh_all.data_ptr<scalar_t>() : nullptr,
        d.proj ? dr.data_ptr<scalar_t>() : nullptr, hx_grad, step_grads ? &*step_grads : nullptr,
        lanes ? w_lanes.const_data_ptr<scalar_t>() : nullptr};
    if (!Backend::template fused_backward<scalar_t>(s, d, a.reverse, buffers)) {
      Backend::for_each_part(parts, [&](const Part& part, auto& sync) {
        backward_loop<Backend, scalar_t>(s, d, a.reverse, part, sync, buffers);
      });
    }
  }

  // Weight gradients: one GEMM each over all time-major rows. The input-side gate gradients are
  // the last G columns of dgates, the recurrent-side ones the first G (the same for LSTM/RNN).
  const at::Tensor dgates_x = dgates.narrow(1, S - d.G, d.G);
  const at::Tensor dgates_h = dgates.narrow(1, 0, d.G);
  const at::Tensor h_prev = workspace.narrow(0, s.N * S, s.N * d.P).view({s.N, d.P});
  at::Tensor grad_w_ih, grad_w_hh, sum_x, sum_h;
  if constexpr (Backend::kStepGradients) {
    if (step_grads) {  // the parts' partial sums added
      std::tie(grad_w_ih, grad_w_hh, sum_x, sum_h) =
          Backend::template finish_gradients<scalar_t>(d, *step_grads, sums);
    }
  }
  if (!step_grads) {
    // dW_hh without processing step 0's rows where their h_prev (h0) is zero: they lie at one
    // end of the time-major rows (step 0's first, or in reverse T - 1's last).
    int64_t hh_begin = 0, hh_rows = s.N;
    if (s.N > 0 && first_state_zero<Backend, scalar_t>(
                       rows0, h_prev.const_data_ptr<scalar_t>() + s.offset[t0] * d.P, d.P,
                       dgates_h.const_data_ptr<scalar_t>() + s.offset[t0] * S, rows0, d.G, S,
                       d.P, s.T)) {
      hh_rows = s.N - rows0;
      hh_begin = s.offset[t0] == 0 ? rows0 : 0;
    }
    // The input side and the recurrent side are independent: the backend may run them at once
    // (given the multiply-adds of the largest product).
    Backend::concurrently(
        s.N * d.G * std::max(d.I, d.P),
        [&] {
          if (input_grad) {
            grad_input =
                Backend::template grad_input<scalar_t>(dgates_x, a.w_ih, x, a.input_batch_first);
          }
          grad_w_ih = weight_gradient<Backend, scalar_t>(dgates_x, x);
        },
        [&] {
          grad_w_hh = weight_gradient<Backend, scalar_t>(dgates_h.narrow(0, hh_begin, hh_rows),
                                                         h_prev.narrow(0, hh_begin, hh_rows),
                                                         roll);
          if (sum_input_side) sum_x = Backend::template column_sums<scalar_t>(dgates_x);
          if (gru && a.b_hh) sum_h = Backend::template column_sums<scalar_t>(dgates_h);
        });
  }
  if (!input_grad) grad_input = at::zeros(input_shape, opts);
  at::Tensor grad_b_ih = a.b_ih ? sum_x : at::empty({0}, opts);
  at::Tensor grad_b_hh = at::empty({0}, opts);
  if (a.b_hh) grad_b_hh = gru ? sum_h : (a.b_ih ? sum_x.clone() : sum_x);
  // Back from the order n, r, z to r, z, n (weight_gradient's dW_hh is already): the step
  // gradients' dW_hh is small (kStepGradientMaxSumsBytes).
  if (gru && step_grads) grad_w_hh = grad_w_hh.roll(-roll, 0);
  if (gru && a.b_hh) grad_b_hh = grad_b_hh.roll(-roll, 0);
  at::Tensor grad_w_hr = at::empty({0}, opts);
  if (d.proj) {
    const int64_t r_off = s.N * (S + d.P + d.H);
    grad_w_hr = weight_gradient<Backend, scalar_t>(
        dh_all, workspace.narrow(0, r_off, s.N * d.H).view({s.N, d.H}));
  }
  if (!hx_grad) dh_state.zero_();  // (the loop left a partial sum there, or none)
  return {grad_input, dh_state,  dc_state,  grad_w_ih,
          grad_w_hh,  grad_b_ih, grad_b_hh, grad_w_hr};
}

Mode parse_mode(c10::string_view mode);

// The op's input as the layer reads it: [T, B, I] (with input_batch_first the transposed view of
// a padded [B, T, I] one) or packed [N, I].
at::Tensor time_major(const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
                      bool input_batch_first);

// The op entry points, instantiated by each backend with its own dtype dispatch and device guard:
//   Backend::dispatch(dtype, fn) calls fn(static_cast<scalar_t*>(nullptr));
//   Backend::DeviceGuard(device) makes the input's device current for the call.
template <class Backend>
ForwardResult run_forward(const ForwardArgs& a) {
  typename Backend::DeviceGuard guard(a.input.device());
  // The ATen calls inside run in the given dtypes: autocast (if on) already applied, or not,
  // at the op's boundary.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  ForwardResult result;
  Backend::dispatch(a.input.scalar_type(), [&](auto* tag) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    result = layer_forward<Backend, scalar_t>(a);
  });
  return result;
}

template <class Backend>
ForwardResult rnn_forward(c10::string_view mode, const at::Tensor& input,
                          const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                          const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                          const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                          const c10::optional<at::Tensor>& b_hh,
                          const c10::optional<at::Tensor>& w_hr, bool reverse, bool train,
                          bool cell_states, bool input_batch_first) {
  const at::Tensor x = time_major(input, batch_sizes, input_batch_first);
  return run_forward<Backend>(ForwardArgs{parse_mode(mode), x, batch_sizes, hx, cx, w_ih, w_hh,
                                          b_ih, b_hh, w_hr, reverse, train, cell_states,
                                          input_batch_first});
}

template <class Backend>
BackwardResult run_backward(const ForwardArgs& a, const at::Tensor& workspace,
                            const at::Tensor& grad_output, const at::Tensor& grad_hy,
                            const c10::optional<at::Tensor>& grad_cy,
                            const c10::optional<at::Tensor>& grad_cell_states, bool consume,
                            bool input_grad, bool hx_grad) {
  typename Backend::DeviceGuard guard(a.input.device());
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  BackwardResult result;
  Backend::dispatch(a.input.scalar_type(), [&](auto* tag) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    result = layer_backward<Backend, scalar_t>(a, workspace, grad_output, grad_hy, grad_cy,
                                               grad_cell_states, consume, input_grad, hx_grad);
  });
  return result;
}

// rnn_backward (Consume = false) and rnn_backward_consume (true: the workspace is overwritten).
template <class Backend, bool Consume = false>
BackwardResult rnn_backward(c10::string_view mode, const at::Tensor& input,
                            const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                            const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh,
                            const c10::optional<at::Tensor>& w_hr, bool reverse,
                            const at::Tensor& workspace, const at::Tensor& grad_output,
                            const at::Tensor& grad_hy, const c10::optional<at::Tensor>& grad_cy,
                            const c10::optional<at::Tensor>& grad_cell_states,
                            bool input_grad = true, bool hx_grad = true,
                            bool input_batch_first = false) {
  const at::Tensor x = time_major(input, batch_sizes, input_batch_first);
  return run_backward<Backend>(ForwardArgs{parse_mode(mode), x, batch_sizes, hx, cx, w_ih, w_hh,
                                           b_ih, b_hh, w_hr, reverse, true, false,
                                           input_batch_first},
                               workspace, grad_output, grad_hy, grad_cy, grad_cell_states,
                               Consume, input_grad, hx_grad);
}

}  // namespace fused_rnn
