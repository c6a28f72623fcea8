// Autograd for fused_rnn::rnn_forward, in C++: the backward is the registered op rnn_backward.
//
// Written here rather than with torch.library.register_autograd because the Python
// autograd.Function path cost more than the kernels on the seed models (about 0.8 ms of a
// 2.8 ms training step of the toxic-comment LSTM went to Python wrappers). torch.compile still
// traces it: the forward and backward are dispatcher calls with fake kernels (fused_rnn/_ops.py).
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <string>

namespace fused_rnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

at::Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }
OptTensor to_optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    c10::string_view, const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    bool, bool, bool);

const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fused_rnn::rnn_forward", "")
                             .typed<ForwardSignature>();
  return op;
}

using BackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                     at::Tensor, at::Tensor, at::Tensor>(
    c10::string_view, const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    bool, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&);
using BackwardOp = c10::TypedOperatorHandle<BackwardSignature>;

BackwardOp find_backward_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<BackwardSignature>();
}

// rnn_backward, or rnn_backward_consume (which overwrites the workspace).
const BackwardOp& backward_op(bool consume) {
  static const BackwardOp plain = find_backward_op("fused_rnn::rnn_backward");
  static const BackwardOp consuming = find_backward_op("fused_rnn::rnn_backward_consume");
  return consume ? consuming : plain;
}

class RNNLayerFunction : public torch::autograd::Function<RNNLayerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, c10::string_view mode,
                               const at::Tensor& input, const OptTensor& batch_sizes,
                               const at::Tensor& hx, const OptTensor& cx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                               bool train, bool cell_states) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, hy, cy, cells, workspace] =
        forward_op().call(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                          reverse, train, cell_states);
    // The workspace is saved as a TensorImpl of its own (same storage), which only autograd
    // holds: whoever holds the returned one, or a view of it, shows in the storage's use count
    // (owns_workspace below).
    ctx->save_for_backward({input, or_undefined(batch_sizes), hx, or_undefined(cx), w_ih, w_hh,
                            or_undefined(b_ih), or_undefined(b_hh), or_undefined(w_hr),
                            workspace.variable_data()});
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["train"] = train;
    ctx->saved_data["cell_states"] = cell_states;
    ctx->mark_non_differentiable({workspace});
    // The backward handles undefined output gradients itself (no zeros the size of the outputs).
    ctx->set_materialize_grads(false);
    return {output, hy, cy, cells, workspace};
  }

  // Whether the backward pass may write its gate gradients over the workspace instead of a new
  // [N, gates] buffer (rnn_backward_consume), which keeps its peak memory at the forward's.
  // Only when nothing can see the workspace afterwards:
  //  * not under tracing (torch.compile's backward graph: functional/fake tensors), where a
  //    mutation would be functionalised into a copy;
  //  * the graph is not retained, so autograd frees the saved tensors once this node has run;
  //  * its storage has one TensorImpl: the one saved (or, with saved-tensor hooks, what they
  //    packed and unpacked). The caller of rnn_forward got the workspace as an output (fused_rnn's
  //    modules drop it at once); holding it, a view of it or its storage adds a reference.
  static bool owns_workspace(const at::Tensor& workspace) {
    if (workspace.key_set().has_any(c10::DispatchKeySet(
            {c10::DispatchKey::Functionalize, c10::DispatchKey::Python}))) {
      return false;
    }
    if (torch::autograd::get_current_graph_task_keep_graph()) return false;
    return workspace.storage().use_count() == 1;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(ctx->saved_data["train"].toBool(),
                "fused_rnn: rnn_forward was called with train=False, so it saved nothing to "
                "differentiate; call it with train=True when gradients are needed");
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "fused_rnn: differentiating the backward pass (double backward, e.g. a gradient "
                "penalty with create_graph=True) is not supported; torch.nn's RNNs support it on "
                "the CPU");
    auto saved = ctx->get_saved_variables();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const bool lstm = mode == "LSTM";
    const at::Tensor &input = saved[0], &hx = saved[2], &cx = saved[3];
    at::Tensor grad_output = grads[0], grad_hy = grads[1], grad_cy = grads[2];
    if (!grad_output.defined()) {
      std::vector<int64_t> shape = input.sizes().vec();
      shape.back() = hx.size(-1);
      grad_output = at::zeros(shape, input.options());
    }
    if (!grad_hy.defined()) grad_hy = at::zeros_like(hx);
    if (lstm && !grad_cy.defined()) grad_cy = at::zeros_like(cx);
    OptTensor grad_cells;
    if (ctx->saved_data["cell_states"].toBool() && grads[3].defined()) grad_cells = grads[3];
    const bool consume = owns_workspace(saved[9]);
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr] = backward_op(consume).call(
        mode, input, to_optional(saved[1]), hx, to_optional(cx), saved[4], saved[5],
        to_optional(saved[6]), to_optional(saved[7]), to_optional(saved[8]),
        ctx->saved_data["reverse"].toBool(), saved[9], grad_output, grad_hy,
        lstm ? OptTensor(grad_cy) : c10::nullopt, grad_cells);
    const at::Tensor none;
    return {none,
            g_input,
            none,
            g_hx,
            cx.defined() ? g_cx : none,
            g_w_ih,
            g_w_hh,
            saved[6].defined() ? g_b_ih : none,
            saved[7].defined() ? g_b_hh : none,
            saved[8].defined() ? g_w_hr : none,
            none,
            none,
            none};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_forward_autograd(
    c10::string_view mode, const at::Tensor& input, const OptTensor& batch_sizes,
    const at::Tensor& hx, const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
    bool train, bool cell_states) {
  if (!c10::GradMode::is_enabled()) {  // nothing to record: skip the autograd Function
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op().call(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                             reverse, train, cell_states);
  }
  auto out = RNNLayerFunction::apply(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                     w_hr, reverse, train, cell_states);
  return {out[0], out[1], out[2], out[3], out[4]};
}

// The backward ops are not differentiable: with grad mode on and an input that requires grad
// they refuse, instead of returning gradients silently detached from the graph.
template <bool Consume>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
rnn_backward_autograd(c10::string_view mode, const at::Tensor& input,
                      const OptTensor& batch_sizes, const at::Tensor& hx, const OptTensor& cx,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                      const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                      const at::Tensor& workspace, const at::Tensor& grad_output,
                      const at::Tensor& grad_hy, const OptTensor& grad_cy,
                      const OptTensor& grad_cell_states) {
  auto needs_grad = [](const OptTensor& t) { return t.has_value() && t->requires_grad(); };
  const bool any = input.requires_grad() || hx.requires_grad() || needs_grad(cx) ||
                   w_ih.requires_grad() || w_hh.requires_grad() || needs_grad(b_ih) ||
                   needs_grad(b_hh) || needs_grad(w_hr) || grad_output.requires_grad() ||
                   grad_hy.requires_grad() || needs_grad(grad_cy) || needs_grad(grad_cell_states);
  TORCH_CHECK(!(any && c10::GradMode::is_enabled()),
              "fused_rnn: differentiating the backward pass (double backward) is not supported");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return backward_op(Consume).call(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                   w_hr, reverse, workspace, grad_output, grad_hy, grad_cy,
                                   grad_cell_states);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);
  m.impl("rnn_backward", &rnn_backward_autograd<false>);
  m.impl("rnn_backward_consume", &rnn_backward_autograd<true>);
}

}  // namespace fused_rnn
