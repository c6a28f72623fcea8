// One layer in one direction as differentiable ATen ops, step by step (torch.nn's CPU way):
// what the double backward differentiates (csrc/autograd.cpp). Slow, but every op in it has
// derivatives of every order. The arguments are rnn_forward's (csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

namespace fused_rnn {

struct ReferenceResult {
  at::Tensor output, hy, cy, cell_states;  // cy, cell_states undefined unless LSTM / asked for
};

ReferenceResult reference_layer(c10::string_view mode, const at::Tensor& input,
                                const c10::optional<at::Tensor>& batch_sizes,
                                const at::Tensor& hx, const at::Tensor& cx,
                                const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const at::Tensor& b_ih, const at::Tensor& b_hh,
                                const at::Tensor& w_hr, bool reverse, bool input_batch_first,
                                bool cell_states);

}  // namespace fused_rnn
