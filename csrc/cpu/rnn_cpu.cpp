// CPU registrations of the fused_rnn ops.
#include <torch/library.h>

#include "../sequence.h"
#include "backend.h"

namespace fused_rnn {

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("rnn_forward", &rnn_forward<CPUBackend>);
  m.impl("rnn_backward", &rnn_backward<CPUBackend>);
  m.impl("rnn_backward_consume", &rnn_backward<CPUBackend, true>);
}

}  // namespace fused_rnn
