// Autograd for fused_rnn::rnn_forward, in C++: the backward is the registered op rnn_backward.
//
// Written here rather than with torch.library.register_autograd because the Python
// autograd.Function path cost more than the kernels on the seed models (about 0.8 ms of a
// 2.8 ms training step of the toxic-comment LSTM went to Python wrappers). torch.compile still
// traces it: the forward and backward are dispatcher calls with fake kernels (fused_rnn/_ops.py).
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "handles.h"
#include "reference.h"

namespace fused_rnn {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// How autograd holds its nodes: c10::intrusive_ptr since torch 2.14, std::shared_ptr before (the
// GPU machine's torch 2.11). Node::getptr() says which; nothing below names the pointer type.
using NodePtr = decltype(std::declval<torch::autograd::Node&>().getptr());
constexpr bool kSharedNodes = std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>;

template <class T, class... Args>
auto make_node(Args&&... args) {
  if constexpr (kSharedNodes) {
    // torch::autograd::deleteNode as generated code uses it (it frees long chains without deep
    // recursion), found by argument-dependent lookup: torch 2.14 has no such function.
    return std::shared_ptr<T>(new T(std::forward<Args>(args)...),
                              [](T* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

// torch::autograd::fire_node_creation_hooks(const NodePtr&) where torch has it (found by
// argument-dependent lookup, and preferred to this template as an exact non-template match);
// older torch has no node creation hooks, and this does nothing.
template <class P>
void fire_node_creation_hooks(const P&) {}

void node_created(const NodePtr& node) { fire_node_creation_hooks(node); }

at::Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }
OptTensor to_optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

using BackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                     at::Tensor, at::Tensor, at::Tensor>(
    c10::string_view, const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    bool, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&, bool, bool, bool);
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

// The node rnn_forward records (the generated VariableType code's way: a torch::autograd::Node
// holding SavedVariables; torch::autograd::Function's context, its saved_data map and its
// per-output bookkeeping cost ~14 us per call here, more than a tiny model's kernel).
// Edges: input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr; outputs: output, hy, cy, cell_states.
struct RNNLayerBackward : public torch::autograd::Node {
  std::string mode;
  bool reverse = false, train = false, cell_states = false, input_batch_first = false;
  SavedVariable input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr;
  // Saved as a TensorImpl of its own (same storage), which only this node holds: whoever holds
  // the returned workspace, or a view of it, shows in the storage's use count (owns_workspace).
  SavedVariable workspace;

  std::string name() const override { return "RNNLayerBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : {&input, &batch_sizes, &hx, &cx, &w_ih, &w_hh, &b_ih, &b_hh, &w_hr,
                             &workspace}) {
      v->reset_data();
    }
  }

  // Whether the backward pass may write its gate gradients over the workspace instead of a new
  // [N, gates] buffer (rnn_backward_consume), which keeps its peak memory at the forward's.
  // Only when nothing can see the workspace afterwards:
  //  * not under tracing (torch.compile's backward graph: functional/fake tensors), where a
  //    mutation would be functionalised into a copy, nor under torch.func's transforms (their
  //    wrappers have no storage to count);
  //  * the graph is not retained, so autograd frees the saved tensors once this node has run;
  //  * its storage has one TensorImpl: the one saved (or, with saved-tensor hooks, what they
  //    packed and unpacked). The caller of rnn_forward got the workspace as an output (fused_rnn's
  //    modules drop it at once); holding it, a view of it or its storage adds a reference.
  static bool owns_workspace(const at::Tensor& workspace) {
    if (workspace.key_set().has_any(c10::DispatchKeySet(
            {c10::DispatchKey::Functionalize, c10::DispatchKey::Python,
             c10::DispatchKey::FuncTorchGradWrapper, c10::DispatchKey::FuncTorchBatched}))) {
      return false;
    }
    if (torch::autograd::get_current_graph_task_keep_graph()) return false;
    return workspace.storage().use_count() == 1;
  }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(train,
                "fused_rnn: rnn_forward was called with train=False, so it saved nothing to "
                "differentiate; call it with train=True when gradients are needed");
    std::lock_guard<std::mutex> lock(mutex_);
    const NodePtr self = getptr();
    const at::Tensor x = input.unpack(self), hx_t = hx.unpack(self), cx_t = cx.unpack(self);
    const at::Tensor b_ih_t = b_ih.unpack(self), b_hh_t = b_hh.unpack(self);
    const at::Tensor w_hr_t = w_hr.unpack(self);
    at::Tensor ws = workspace.unpack(self);
    const bool lstm = mode == "LSTM";
    // Undefined output gradients (outputs not used) are not materialised by the engine.
    at::Tensor grad_output = grads[0], grad_hy = grads[1], grad_cy = grads[2];
    if (!grad_output.defined()) {  // (time-major, whatever the input's layout)
      std::vector<int64_t> shape = x.sizes().vec();
      if (input_batch_first) std::swap(shape[0], shape[1]);
      shape.back() = hx_t.size(-1);
      grad_output = at::zeros(shape, x.options());
    }
    if (!grad_hy.defined()) grad_hy = at::zeros_like(hx_t);
    if (lstm && !grad_cy.defined()) grad_cy = at::zeros_like(cx_t);
    OptTensor grad_cells;
    if (cell_states && grads[3].defined()) grad_cells = grads[3];
    const bool consume = owns_workspace(ws);
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr] = backward_op(consume).call(
        mode, x, to_optional(batch_sizes.unpack(self)), hx_t, to_optional(cx_t),
        w_ih.unpack(self), w_hh.unpack(self), to_optional(b_ih_t), to_optional(b_hh_t),
        to_optional(w_hr_t), reverse, ws, grad_output, grad_hy,
        lstm ? OptTensor(grad_cy) : c10::nullopt, grad_cells, should_compute_output(0),
        should_compute_output(1), input_batch_first);
    const at::Tensor none;
    return {g_input,
            g_hx,
            cx_t.defined() ? g_cx : none,
            g_w_ih,
            g_w_hh,
            b_ih_t.defined() ? g_b_ih : none,
            b_hh_t.defined() ? g_b_hh : none,
            w_hr_t.defined() ? g_w_hr : none};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_forward_autograd(
    c10::string_view mode, const at::Tensor& input, const OptTensor& batch_sizes,
    const at::Tensor& hx, const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
    bool train, bool cell_states, bool input_batch_first) {
  const at::Tensor cx_t = or_undefined(cx), b_ih_t = or_undefined(b_ih);
  const at::Tensor b_hh_t = or_undefined(b_hh), w_hr_t = or_undefined(w_hr);
  // (false in no_grad mode too)
  const bool record = torch::autograd::compute_requires_grad(input, hx, cx_t, w_ih, w_hh, b_ih_t,
                                                             b_hh_t, w_hr_t);
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = forward_op().call(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                            reverse, train, cell_states, input_batch_first);
  }
  if (!record) return out;  // nothing to differentiate: no node
  auto node = make_node<RNNLayerBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, hx, cx_t, w_ih, w_hh, b_ih_t,
                                                           b_hh_t, w_hr_t));
  node->mode = std::string(mode);
  node->reverse = reverse;
  node->train = train;
  node->cell_states = cell_states;
  node->input_batch_first = input_batch_first;
  node->input = SavedVariable(input, false);
  node->batch_sizes = SavedVariable(or_undefined(batch_sizes), false);
  node->hx = SavedVariable(hx, false);
  node->cx = SavedVariable(cx_t, false);
  node->w_ih = SavedVariable(w_ih, false);
  node->w_hh = SavedVariable(w_hh, false);
  node->b_ih = SavedVariable(b_ih_t, false);
  node->b_hh = SavedVariable(b_hh_t, false);
  node->w_hr = SavedVariable(w_hr_t, false);
  auto& [output, hy, cy, cells, workspace] = out;
  node->workspace = SavedVariable(workspace.variable_data(), false);
  // output, hy, cy, cell_states are differentiable (inputs 0-3 of the node); the workspace not.
  torch::autograd::set_history(output, node);
  torch::autograd::set_history(hy, node);
  torch::autograd::set_history(cy, node);
  torch::autograd::set_history(cells, node);
  node_created(node);
  return out;
}

// Double backward: the backward ops' own derivative. With grad mode on (create_graph=True, which
// torch.func.grad always asks for) and an input that needs gradients, the gradients that the
// fused kernel returned get this node as their history, and only if they are differentiated
// (a gradient penalty; MAML's second order) does it run: it differentiates the layer again in
// differentiable ATen ops (reference_layer, torch.nn's CPU speed): with v the gradients of the
// first-order gradients g(θ, ḡ) (θ the layer's inputs and weights, ḡ the gradients of its
// outputs), it returns d<g, v>/dθ and d<g, v>/dḡ. Run with grad mode on itself (their own
// create_graph=True), it records that computation, so derivatives of any order follow.
// Edges and saved tensors: input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, grad_output, grad_hy,
// grad_cy, grad_cell_states; inputs: the 8 first-order gradients.
constexpr int kFirstOrder = 8;
constexpr int kSecondOrderEdges = 12;
struct RNNLayerDoubleBackward : public torch::autograd::Node {
  std::string mode;
  bool reverse = false, input_batch_first = false, input_grad = true, hx_grad = true;
  SavedVariable batch_sizes;
  std::array<SavedVariable, kSecondOrderEdges> saved;

  std::string name() const override { return "RNNLayerDoubleBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    batch_sizes.reset_data();
    for (SavedVariable& v : saved) v.reset_data();
  }

  variable_list apply(variable_list&& vs) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const NodePtr self = getptr();
    // The first-order gradients that are differentiated (v given; with input_grad / hx_grad
    // False the kernel returned zeros, not functions of anything), and the derivatives wanted.
    std::array<bool, kSecondOrderEdges> first{}, wanted{};
    bool any_first = false, any_wanted = false;
    for (int k = 0; k < kSecondOrderEdges; ++k) {
      first[k] = k < kFirstOrder && vs[k].defined() && (k != 0 || input_grad) &&
                 (k != 1 || hx_grad);
      wanted[k] = task_should_compute_output(k);
      any_first |= first[k];
      any_wanted |= wanted[k];
    }
    variable_list result(kSecondOrderEdges);
    if (!any_first || !any_wanted) return result;
    // The derivatives are this node's own, partial ones (the engine passes them on along its
    // edges): taken with respect to stand-ins of the saved tensors, never through their history
    // (the output gradients are functions of the weights too, say). Without grad mode the
    // stand-ins are fresh leaves, requiring gradients only where one is asked for. With it
    // (create_graph=True here: a third-order derivative to come) the results need their own
    // graph back to what they are functions of: a tensor with history stands in as a view of
    // itself (its own node, downstream of that history), and the computation below, the
    // incoming vs included, is recorded.
    const bool higher = c10::GradMode::is_enabled();
    std::array<at::Tensor, kSecondOrderEdges> leaves;
    for (int k = 0; k < kSecondOrderEdges; ++k) {
      const at::Tensor t = saved[k].unpack(self);
      if (!t.defined()) continue;
      const bool needed = first[k] || wanted[k];
      leaves[k] = higher && t.requires_grad() ? t.view_as(t) : t.detach().requires_grad_(needed);
    }
    const auto& [x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, g_out, g_hy, g_cy, g_cells] = leaves;
    {
      at::AutoGradMode grad_mode(true);
      const ReferenceResult r = reference_layer(
          mode, x, to_optional(batch_sizes.unpack(self)), hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
          reverse, input_batch_first, g_cells.defined());
      variable_list outs{r.output, r.hy}, out_grads{g_out, g_hy};
      if (r.cy.defined() && g_cy.defined()) {
        outs.push_back(r.cy);
        out_grads.push_back(g_cy);
      }
      if (r.cell_states.defined()) {
        outs.push_back(r.cell_states);
        out_grads.push_back(g_cells);
      }
      variable_list params, weights, targets;
      for (int k = 0; k < kFirstOrder; ++k) {
        if (first[k] && leaves[k].defined()) {
          params.push_back(leaves[k]);
          weights.push_back(vs[k]);
        }
      }
      if (params.empty()) return result;
      // <g, v> over those first-order gradients, differentiated
      const variable_list grads = torch::autograd::grad(outs, params, out_grads,
                                                        /*retain_graph=*/true,
                                                        /*create_graph=*/true,
                                                        /*allow_unused=*/true);
      variable_list used, used_weights;
      for (size_t p = 0; p < grads.size(); ++p) {
        if (grads[p].defined() && grads[p].requires_grad()) {
          used.push_back(grads[p]);
          used_weights.push_back(weights[p]);
        }
      }
      for (int k = 0; k < kSecondOrderEdges; ++k) {
        if (wanted[k] && leaves[k].defined()) targets.push_back(leaves[k]);
      }
      if (used.empty() || targets.empty()) return result;
      const variable_list second = torch::autograd::grad(used, targets, used_weights,
                                                         /*retain_graph=*/higher,
                                                         /*create_graph=*/higher,
                                                         /*allow_unused=*/true);
      for (int k = 0, p = 0; k < kSecondOrderEdges; ++k) {
        if (wanted[k] && leaves[k].defined()) result[k] = second[p++];
      }
    }
    return result;
  }
};

template <bool Consume>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
rnn_backward_autograd(c10::string_view mode, const at::Tensor& input,
                      const OptTensor& batch_sizes, const at::Tensor& hx, const OptTensor& cx,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                      const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                      const at::Tensor& workspace, const at::Tensor& grad_output,
                      const at::Tensor& grad_hy, const OptTensor& grad_cy,
                      const OptTensor& grad_cell_states, bool input_grad, bool hx_grad,
                      bool input_batch_first) {
  auto needs_grad = [](const OptTensor& t) { return t.has_value() && t->requires_grad(); };
  const bool any = input.requires_grad() || hx.requires_grad() || needs_grad(cx) ||
                   w_ih.requires_grad() || w_hh.requires_grad() || needs_grad(b_ih) ||
                   needs_grad(b_hh) || needs_grad(w_hr) || grad_output.requires_grad() ||
                   grad_hy.requires_grad() || needs_grad(grad_cy) || needs_grad(grad_cell_states);
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
             at::Tensor>
      grads;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    grads = backward_op(Consume).call(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                      w_hr, reverse, workspace, grad_output, grad_hy, grad_cy,
                                      grad_cell_states, input_grad, hx_grad, input_batch_first);
  }
  if (!any || !c10::GradMode::is_enabled()) return grads;
  auto node = make_node<RNNLayerDoubleBackward>();
  const std::array<at::Tensor, kSecondOrderEdges> inputs{
      input, hx, or_undefined(cx), w_ih, w_hh, or_undefined(b_ih), or_undefined(b_hh),
      or_undefined(w_hr), grad_output, grad_hy, or_undefined(grad_cy),
      or_undefined(grad_cell_states)};
  node->set_next_edges(torch::autograd::collect_next_edges(
      at::ArrayRef<at::Tensor>(inputs.data(), inputs.size())));
  node->mode = std::string(mode);
  node->reverse = reverse;
  node->input_batch_first = input_batch_first;
  node->input_grad = input_grad;
  node->hx_grad = hx_grad;
  node->batch_sizes = SavedVariable(or_undefined(batch_sizes), false);
  for (int k = 0; k < kSecondOrderEdges; ++k) node->saved[k] = SavedVariable(inputs[k], false);
  std::apply(
      [&](auto&... g) { ((g.defined() ? torch::autograd::set_history(g, node) : void()), ...); },
      grads);
  node_created(node);
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, Autograd, m) {
  m.impl("rnn_forward", &rnn_forward_autograd);
  m.impl("rnn_backward", &rnn_backward_autograd<false>);
  m.impl("rnn_backward_consume", &rnn_backward_autograd<true>);
}

}  // namespace fused_rnn
