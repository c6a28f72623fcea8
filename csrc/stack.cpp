// fused_rnn::rnn: a stack of layers, one or two directions each, over the single-layer op
// (torch's _VF.lstm/gru/rnn_tanh/rnn_relu to rnn_forward's _thnn-like cell loop).
//
// CompositeImplicitAutograd: it is written in ops, so autograd records rnn_forward's node per
// layer-direction (and the views, cat, stack and dropout around them), and torch.compile traces
// through it to rnn_forward's fake kernel. In C++ because the same loop in Python (argument
// slicing, state selects, the transposes, the stacking, a Python op call per layer-direction)
// was a tenth of a small model's forward: the char-RNN's bench forward went 60 -> 55 us and the
// toxic LSTM's 180 -> 168 us when it moved here.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "handles.h"

namespace fused_rnn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_stack(
    c10::string_view mode, const at::Tensor& input, const OptTensor& batch_sizes,
    const at::Tensor& hx, const OptTensor& cx, at::TensorList weights, bool has_bias,
    int64_t num_layers, double dropout, bool training, bool bidirectional, bool batch_first,
    bool has_proj, bool cell_states) {
  const bool lstm = mode == "LSTM";
  const int64_t directions = bidirectional ? 2 : 1;
  const int64_t per_layer = 2 + (has_bias ? 2 : 0) + (has_proj ? 1 : 0);
  TORCH_CHECK(num_layers >= 1, "fused_rnn: num_layers must be at least 1, got ", num_layers);
  TORCH_CHECK(int64_t(weights.size()) == num_layers * directions * per_layer, "fused_rnn: ",
              num_layers, " layer(s) x ", directions, " direction(s) need ",
              num_layers * directions * per_layer, " weights, got ", weights.size());
  TORCH_CHECK(!lstm || (cx && cx->defined()), "fused_rnn: LSTM needs cx");
  TORCH_CHECK(!batch_first || !batch_sizes, "fused_rnn: batch_first is for padded input only");
  // Whether autograd will need the results: the layers then keep their workspaces.
  const bool train =
      c10::GradMode::is_enabled() &&
      (input.requires_grad() || hx.requires_grad() || (lstm && cx->requires_grad()) ||
       std::any_of(weights.begin(), weights.end(), [](const at::Tensor& w) {
         return w.requires_grad();
       }));
  // One layer-direction: the op takes the states as given ([1, B, P], or a cell's [B, P]) and
  // returns h_n, c_n in that shape (a select and a stack fewer, and their autograd nodes).
  const bool whole = num_layers * directions == 1;
  // A batch-first input goes to the first layer as it is (input_batch_first: no transposed view,
  // and its gradient comes back in its own layout, where AccumulateGrad or an embedding's
  // backward would copy a transposed one); every layer's output is time-major.
  at::Tensor layer_input = input;
  std::vector<at::Tensor> h_n, c_n, outputs, cells;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const bool last = layer == num_layers - 1;
    outputs.clear();
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      const at::TensorList w = weights.slice(index * per_layer, per_layer);
      const OptTensor b_ih = has_bias ? OptTensor(w[2]) : c10::nullopt;
      const OptTensor b_hh = has_bias ? OptTensor(w[3]) : c10::nullopt;
      const OptTensor w_hr = has_proj ? OptTensor(w[per_layer - 1]) : c10::nullopt;
      const at::Tensor h0 = whole ? hx : hx.select(0, index);
      const OptTensor c0 = lstm ? OptTensor(whole ? *cx : cx->select(0, index)) : c10::nullopt;
      auto [out, hy, cy, c_all, workspace] =
          forward_op().call(mode, layer_input, batch_sizes, h0, c0, w[0], w[1], b_ih, b_hh,
                            w_hr, direction == 1, train, cell_states && last,
                            batch_first && layer == 0);
      outputs.push_back(std::move(out));
      h_n.push_back(std::move(hy));
      if (lstm) c_n.push_back(std::move(cy));
      if (cell_states && last) cells.push_back(std::move(c_all));
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, -1);
    if (dropout != 0 && training && !last) layer_input = at::dropout(layer_input, dropout, true);
  }
  auto states = [&](std::vector<at::Tensor>& s) { return whole ? s[0] : at::stack(s, 0); };
  auto none = [&] { return at::empty({0}, input.options()); };  // (outputs must not alias)
  at::Tensor output = batch_first ? layer_input.transpose(0, 1) : layer_input;
  at::Tensor cell_out;
  if (!cell_states) {
    cell_out = none();
  } else {
    cell_out = directions == 1 ? cells[0] : at::cat(cells, -1);
    if (batch_first) cell_out = cell_out.transpose(0, 1);
  }
  return {output, states(h_n), lstm ? states(c_n) : none(), cell_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CompositeImplicitAutograd, m) { m.impl("rnn", &rnn_stack); }

}  // namespace fused_rnn
