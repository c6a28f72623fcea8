// Typed dispatcher handles of the layer op, for the C++ code that calls it (the autograd node's
// forward, the layer stack): a call goes through the dispatcher like one from Python.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace fused_rnn {

using OptTensor = c10::optional<at::Tensor>;

using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    c10::string_view, const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    bool, bool, bool, bool);

// fused_rnn::rnn_forward (csrc/ops.cpp).
inline const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fused_rnn::rnn_forward", "")
                             .typed<ForwardSignature>();
  return op;
}

}  // namespace fused_rnn
