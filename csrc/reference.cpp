#include "reference.h"

#include <ATen/ATen.h>

#include <vector>

#include "cells.h"
#include "sequence.h"

namespace fused_rnn {

ReferenceResult reference_layer(c10::string_view mode_name, const at::Tensor& input,
                                const c10::optional<at::Tensor>& batch_sizes,
                                const at::Tensor& hx, const at::Tensor& cx,
                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const at::Tensor& b_ih, const at::Tensor& b_hh,
                                const at::Tensor& w_hr, bool reverse, bool input_batch_first,
                                bool cell_states) {
  const Mode mode = parse_mode(mode_name);
  const bool lstm = mode == Mode::LSTM;
  const at::Tensor x = time_major(input, batch_sizes, input_batch_first);
  const bool leading_one = hx.dim() == 3;  // [1, B, P] states (ops.cpp)
  at::Tensor h = leading_one ? hx.select(0, 0) : hx;
  at::Tensor c = lstm ? (leading_one ? cx.select(0, 0) : cx) : at::Tensor();
  const int64_t B = h.size(0);
  // Rows of each step in the [N, I] rows of x: batch_sizes[t] of them (packed), or B.
  std::vector<int64_t> rows;
  if (batch_sizes) {
    const at::Tensor sizes = batch_sizes->contiguous();
    const int64_t* p = sizes.const_data_ptr<int64_t>();
    rows.assign(p, p + sizes.numel());
  } else {
    rows.assign(x.size(0), B);
  }
  const int64_t T = int64_t(rows.size());
  const at::Tensor x_rows = batch_sizes ? x : x.reshape({T * B, x.size(-1)});
  // Both biases of LSTM/RNN meet the same pre-activation; GRU's b_hh stays on the recurrent
  // side (its n part inside r * (...)), so each bias goes with its own product.
  // Split into steps at once: narrowing it per step made each step's gradient a zero-filled
  // [N, G] tensor, summed over all steps (a GRU's gradient penalty at T 100: 60% of its time).
  const std::vector<at::Tensor> projected =
      at::linear(x_rows, w_ih, b_ih).split_with_sizes(rows, 0);
  std::vector<at::Tensor> outputs(T), cells(T);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = reverse ? T - 1 - k : k, n = rows[t];
    // Step t's rows are the batch's first n (rows sorted by length, as in PackedSequence); the
    // others keep their state (a shorter sequence's has ended, or in reverse not begun).
    const at::Tensor& xg = projected[t];
    const at::Tensor h_prev = h.narrow(0, 0, n);
    const at::Tensor hg = at::linear(h_prev, w_hh, b_hh);
    at::Tensor h_new, c_new;
    if (lstm) {
      const auto x4 = (xg + hg).chunk(4, 1);
      const at::Tensor i = x4[0].sigmoid(), f = x4[1].sigmoid(), g = x4[2].tanh();
      const at::Tensor o = x4[3].sigmoid();
      c_new = f * c.narrow(0, 0, n) + i * g;
      h_new = o * c_new.tanh();
      if (w_hr.defined()) h_new = at::linear(h_new, w_hr);
    } else if (mode == Mode::GRU) {
      const auto x3 = xg.chunk(3, 1), h3 = hg.chunk(3, 1);
      const at::Tensor r = (x3[0] + h3[0]).sigmoid(), z = (x3[1] + h3[1]).sigmoid();
      const at::Tensor cand = (x3[2] + r * h3[2]).tanh();
      h_new = cand + z * (h_prev - cand);
    } else {
      const at::Tensor pre = xg + hg;
      h_new = mode == Mode::RNN_TANH ? pre.tanh() : pre.relu();
    }
    outputs[t] = h_new;
    if (lstm) cells[t] = c_new;
    h = n == B ? h_new : at::cat({h_new, h.narrow(0, n, B - n)});
    if (lstm) c = n == B ? c_new : at::cat({c_new, c.narrow(0, n, B - n)});
  }
  auto join = [&](const std::vector<at::Tensor>& steps) {
    return batch_sizes ? at::cat(steps, 0) : at::stack(steps, 0);
  };
  ReferenceResult result;
  result.output = join(outputs);
  result.hy = leading_one ? h.unsqueeze(0) : h;
  if (lstm) result.cy = leading_one ? c.unsqueeze(0) : c;
  if (lstm && cell_states) result.cell_states = join(cells);
  return result;
}

}  // namespace fused_rnn
