// CPU registrations of the fused_rnn ops.
#include <torch/library.h>

#include <tuple>
#include <utility>

#include "../sequence.h"
#include "backend.h"

namespace fused_rnn {
namespace {

// fp16 and bf16 on the CPU, where torch.nn's RNNs run them too: the fp32 kernels on fp32 copies
// of the arguments (the weights excepted: CPUBackend::kHalfWeights), every result
// rounded back to the input's dtype, the workspace included (so the saved gates are in the
// input's dtype, as CUDA's kernels keep them, and the fake kernels' dtypes hold;
// rnn_backward_consume overwrites the fp32 copy of it, which its contract allows). fp32 math
// throughout, as on CUDA; torch.nn's CPU path rounds every intermediate op's result.
bool computes_in_fp32(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16;
}
at::Tensor fp32(const at::Tensor& t) {  // (not batch_sizes, int64)
  return t.defined() && t.is_floating_point() ? CPUBackend::converted(t, at::kFloat) : t;
}
c10::optional<at::Tensor> fp32(const c10::optional<at::Tensor>& t) {
  if (!t) return t;
  return fp32(*t);
}

// A fp16 / bf16 layer's arguments as the fp32 kernels take them: fp32 copies of all but the
// weights (kHalfWeights), after the checks (dtypes and devices included) on them as given.
struct Fp32Layer {
  at::Tensor x, h;
  c10::optional<at::Tensor> c, b_ih, b_hh, w_hr;
  ForwardArgs args;
  Fp32Layer(c10::string_view mode, const at::Tensor& input,
            const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
            const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
            const c10::optional<at::Tensor>& bias_ih, const c10::optional<at::Tensor>& bias_hh,
            const c10::optional<at::Tensor>& proj, bool reverse, bool train, bool cell_states,
            bool batch_first)
      : x(checked(mode, input, batch_sizes, hx, cx, w_ih, w_hh, bias_ih, bias_hh, proj, reverse,
                  batch_first)),
        h(fp32(hx)),
        c(fp32(cx)),
        b_ih(fp32(bias_ih)),
        b_hh(fp32(bias_hh)),
        w_hr(fp32(proj)),
        args{parse_mode(mode), x,    batch_sizes, h,       c,           w_ih,       w_hh,
             b_ih,             b_hh, w_hr,        reverse, train,       cell_states, batch_first,
             /*half_weights=*/true} {}
  Fp32Layer(const Fp32Layer&) = delete;  // (args refers to the members)

  // The input's fp32 copy, time-major, once the arguments as given pass the checks.
  static at::Tensor checked(c10::string_view mode, const at::Tensor& input,
                            const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                            const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                            const c10::optional<at::Tensor>& b_hh,
                            const c10::optional<at::Tensor>& w_hr, bool reverse,
                            bool batch_first) {
    check_layer_args(ForwardArgs{parse_mode(mode), time_major(input, batch_sizes, batch_first),
                                 batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                 true, false, batch_first});
    return time_major(fp32(input), batch_sizes, batch_first);
  }
};

template <class R>
R in_dtype(R result, at::ScalarType dtype) {
  return std::apply([&](const auto&... t) { return R{CPUBackend::converted(t, dtype)...}; },
                    result);
}

// rnn_forward for any floating dtype: fp16 / bf16 with fp32 copies of all but the weights.
ForwardResult forward(c10::string_view mode, const at::Tensor& input,
                      const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                      const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                      const c10::optional<at::Tensor>& b_hh,
                      const c10::optional<at::Tensor>& w_hr, bool reverse, bool train,
                      bool cell_states, bool batch_first) {
  if (!computes_in_fp32(input.scalar_type())) {
    return rnn_forward<CPUBackend>(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                   w_hr, reverse, train, cell_states, batch_first);
  }
  const Fp32Layer layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                        train, cell_states, batch_first);
  return in_dtype(run_forward<CPUBackend>(layer.args), input.scalar_type());
}

// rnn_backward (Consume false) and rnn_backward_consume (true) for any floating dtype: as the
// forward.
template <bool Consume>
BackwardResult backward(c10::string_view mode, const at::Tensor& input,
                        const c10::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
                        const c10::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                        const c10::optional<at::Tensor>& b_hh,
                        const c10::optional<at::Tensor>& w_hr, bool reverse,
                        const at::Tensor& workspace, const at::Tensor& grad_output,
                        const at::Tensor& grad_hy, const c10::optional<at::Tensor>& grad_cy,
                        const c10::optional<at::Tensor>& grad_cell_states, bool input_grad,
                        bool hx_grad, bool batch_first) {
  if (!computes_in_fp32(input.scalar_type())) {
    return rnn_backward<CPUBackend, Consume>(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih,
                                             b_hh, w_hr, reverse, workspace, grad_output,
                                             grad_hy, grad_cy, grad_cell_states, input_grad,
                                             hx_grad, batch_first);
  }
  const Fp32Layer layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                        true, false, batch_first);
  return in_dtype(run_backward<CPUBackend>(layer.args, fp32(workspace), fp32(grad_output),
                                           fp32(grad_hy), fp32(grad_cy), fp32(grad_cell_states),
                                           Consume, input_grad, hx_grad),
                  input.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rnn_forward", &forward);
  m.impl("rnn_backward", &backward<false>);
  m.impl("rnn_backward_consume", &backward<true>);
}

}  // namespace fused_rnn
