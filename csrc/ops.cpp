// The op schemas (declared once, for every device) and the Python module stub that loads them.
//
// rnn_forward runs one layer in one direction over a whole sequence:
//   input        [T, B, I] (batch_sizes None) or packed [N, I] with batch_sizes [T] (CPU int64,
//                non-increasing: step t uses the first batch_sizes[t] rows, as in PackedSequence)
//   hx [B, P], cx [B, H] (LSTM only); P = proj_size or H. Or both with a leading 1 ([1, B, P]),
//                as a one-layer, one-direction torch.nn module holds them; hy and cy come alike.
//   mode         "LSTM" | "GRU" | "RNN_TANH" | "RNN_RELU"
//   reverse      run from the last step to the first (each row from its own last step)
//   train        save the workspace that rnn_backward needs (otherwise it is empty)
//   cell_states  LSTM: also return c_t of every step (differentiable)
//   input_batch_first  input is [B, T, I] (padded only), and so is its gradient from
//                rnn_backward (contiguous); the output stays time-major. A batch-first model's
//                first layer: its input needs no transposed view, nor its gradient a copy.
// returns output [T, B, P] or [N, P], hy like hx, cy like cx (empty unless LSTM), cell_states
// [T, B, H] or [N, H] (empty unless asked for), workspace.
//
// rnn_backward returns the gradients of input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr from the
// forward's arguments, its workspace and the gradients of its outputs. With input_grad or
// hx_grad False that gradient is not computed (the product of the gate gradients with W_ih
// after the loop, with W_hh at the first step) and is returned as zeros: the autograd node
// passes whether anything needs it (a model's h0 of zeros, a first layer's data input).
// rnn_backward_consume is the same, but writes its gate gradients over the workspace instead of
// a new [N, gates] buffer, which leaves the workspace unusable: the autograd node calls it when
// the graph is not retained (csrc/autograd.cpp). Its `mode` is named `cell` because
// torch.compile's wrapper of mutating ops (auto_functionalized) takes a keyword argument `mode`
// of its own.
//
// rnn runs a stack of layers (torch.nn's RNN modules' forward after their argument checks, like
// torch's _VF.lstm): num_layers layers of one or two directions over rnn_forward, `weights`
// holding w_ih, w_hh[, b_ih, b_hh][, w_hr] per layer and direction in torch.nn's order;
// hx [L*D, B, P], cx [L*D, B, H] (LSTM), or with L*D = 1 also [B, P] / [B, H] (a cell's);
// dropout (when `training`) on the output of every layer but the last; batch_first: input and
// output [B, T, *]. Returns output, h_n like hx, c_n like cx (empty unless LSTM), and the last
// layer's c_t of every step with cell_states (LSTM; directions concatenated like the output).
// Composite (csrc/stack.cpp): autograd and torch.compile see the rnn_forward calls.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fused_rnn._C` loads this library, which runs the TORCH_LIBRARY blocks below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fused_rnn, m) {
  m.def(
      "rnn_forward(str mode, Tensor input, Tensor? batch_sizes, Tensor hx, Tensor? cx, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
      "bool train, bool cell_states=False, bool input_batch_first=False) -> (Tensor output, "
      "Tensor hy, Tensor cy, Tensor cell_states, Tensor workspace)");
  m.def(
      "rnn(str mode, Tensor input, Tensor? batch_sizes, Tensor hx, Tensor? cx, Tensor[] weights, "
      "bool has_bias, int num_layers, float dropout, bool training, bool bidirectional, "
      "bool batch_first, bool has_proj, bool cell_states=False) -> (Tensor output, Tensor h_n, "
      "Tensor c_n, Tensor cell_states)");
  m.def(
      "rnn_backward(str mode, Tensor input, Tensor? batch_sizes, Tensor hx, Tensor? cx, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
      "Tensor workspace, Tensor grad_output, Tensor grad_hy, Tensor? grad_cy, "
      "Tensor? grad_cell_states=None, bool input_grad=True, bool hx_grad=True, "
      "bool input_batch_first=False) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr)");
  m.def(
      "rnn_backward_consume(str cell, Tensor input, Tensor? batch_sizes, Tensor hx, Tensor? cx, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
      "Tensor(a!) workspace, Tensor grad_output, Tensor grad_hy, Tensor? grad_cy, "
      "Tensor? grad_cell_states=None, bool input_grad=True, bool hx_grad=True, "
      "bool input_batch_first=False) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr)");
}
