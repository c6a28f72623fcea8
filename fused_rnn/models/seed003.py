"""Seed 003: the char RNN ("hihell" -> "ihello"), the LSTM part-of-speech tagger, and the
row-by-row image RNN (MNIST rows; scikit-learn's 8x8 digits without a download)."""

import torch
from torch import nn

from ._impl import rnn_namespace

# The seed's toy data.
CHARS = ["h", "i", "e", "l", "o"]
HIHELL = [0, 1, 0, 2, 3, 3]
IHELLO = [1, 0, 2, 3, 3, 4]
TAGGER_SENTENCES = [
    ("The dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("Everybody read that book".split(), ["NN", "V", "DET", "NN"]),
]
TAGS = ["DET", "NN", "V"]


class CharRNN(nn.Module):
    """RNN(5, 3, batch_first) -> Linear(3, 5) over one-hot characters [B, T, 5] -> logits
    [B*T, 5]. CrossEntropyLoss, Adam(lr=0.1) in the seed."""

    def __init__(self, input_size: int = 5, hidden_size: int = 3, num_classes: int = 5,
                 num_layers: int = 1, impl: str = "fused"):
        super().__init__()
        self.hidden_size = hidden_size
        self.rnn = rnn_namespace(impl).RNN(input_size, hidden_size, num_layers=num_layers,
                                           batch_first=True)
        self.fc1 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.rnn(x, h0)
        return self.fc1(out.reshape(-1, self.hidden_size))


class LSTMTagger(nn.Module):
    """Embedding(V, 6) -> LSTM(6, 3, batch_first) -> Linear(3, n_tags): tags for each word of a
    sentence [B, T] -> logits [B*T, n_tags]."""

    def __init__(self, vocab_size: int, num_tags: int = 3, embedding_size: int = 6,
                 hidden_size: int = 3, num_layers: int = 1, impl: str = "fused"):
        super().__init__()
        self.hidden_size = hidden_size
        self.embedding_layer = nn.Embedding(vocab_size, embedding_size)
        self.lstm = rnn_namespace(impl).LSTM(embedding_size, hidden_size, num_layers,
                                             batch_first=True)
        self.linear = nn.Linear(hidden_size, num_tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding_layer(x))
        return self.linear(out.reshape(-1, self.hidden_size))


class RowRNN(nn.Module):
    """Images read row by row: RNN(row width, hidden, layers, batch_first) -> last step ->
    Linear(hidden, 10). MNIST: 28 steps of 28 pixels, hidden 128, 2 layers."""

    def __init__(self, input_size: int = 28, hidden_size: int = 128, num_layers: int = 2,
                 num_classes: int = 10, impl: str = "fused"):
        super().__init__()
        self.rnn = rnn_namespace(impl).RNN(input_size, hidden_size, num_layers=num_layers,
                                           batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:  # [B, 1, H, W] from an image loader
            images = images.squeeze(1)
        out, _ = self.rnn(images)
        return self.fc(out[:, -1, :])
