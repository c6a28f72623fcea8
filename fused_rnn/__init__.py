"""fused_rnn: fused RNN, LSTM and GRU kernels for PyTorch, and drop-in torch.nn modules.

    import fused_rnn
    lstm = fused_rnn.LSTM(20, 64, batch_first=True)   # same arguments as torch.nn.LSTM
"""

from . import _ops  # noqa: F401  (registers torch.ops.fused_rnn.*)
from . import functional
from .info import backend_info, cached_bytes, empty_cache
from .convert import convert
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell, RNNCellBase

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "RNNBase", "RNNCellBase",
           "convert", "functional", "backend_info", "empty_cache", "cached_bytes"]
__version__ = "0.1.0"
