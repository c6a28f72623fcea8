"""fused_rnn.convert: swap the torch.nn RNNs inside an existing model for the fused ones."""

from __future__ import annotations

import torch

from . import modules

# torch.nn class -> fused class. Exact types only: a user's subclass of torch.nn.LSTM may
# override forward, and replacing it would drop that behaviour.
_FUSED = {
    torch.nn.LSTM: modules.LSTM,
    torch.nn.GRU: modules.GRU,
    torch.nn.RNN: modules.RNN,
    torch.nn.LSTMCell: modules.LSTMCell,
    torch.nn.GRUCell: modules.GRUCell,
    torch.nn.RNNCell: modules.RNNCell,
}


def _fused_copy(module: torch.nn.Module) -> torch.nn.Module:
    fused_cls = _FUSED[type(module)]
    fused = fused_cls.__new__(fused_cls)
    # Same attributes (configuration, parameters, buffers, hooks, training mode), so device,
    # dtype, requires_grad and the Parameter objects themselves (and any optimizer holding
    # them) are kept.
    # Containers (the parameter, buffer and hook dicts) are copied, not shared, with the original.
    fused.__dict__.update({k: v.copy() if isinstance(v, (dict, list)) else v
                           for k, v in module.__dict__.items()})
    if isinstance(fused, modules.RNNBase):
        fused._init_flat_weights()
    return fused


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces every torch.nn.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell inside `model`
    (and `model` itself, if it is one) by its fused_rnn counterpart holding the same Parameter
    objects; returns the model (a new object only when `model` itself was replaced).

        model = fused_rnn.convert(model)   # e.g. the seed 001 IMDB sentiment model
    """
    if type(model) in _FUSED:
        return _fused_copy(model)
    for name, child in list(model.named_children()):
        if type(child) in _FUSED:
            setattr(model, name, _fused_copy(child))
        else:
            convert(child)
    return model
