r"""Many graph heads of one shape as one module: ``T`` MLPs computed with batched matrix products.

With hundreds of one-output graph tasks (ToxCast's 617 assays), ``T`` separate head modules cost more than the
encoder: with 617 two-layer heads a forward and backward took 724 ms, 194 ms of it in the encoder, most of the
rest the per-module overhead of small matrix products. :class:`GroupedGraphHeads` holds head ``t``'s layer ``k`` as
slice ``t`` of one ``[T, in_k, out_k]`` weight and computes every head with one ``baddbmm`` per layer:

.. math:: h^{(k)}_t = \sigma\big(h^{(k-1)}_t W^{(k)}_t + b^{(k)}_t\big), \qquad y_t = h^{(K)}_t \in \mathbb{R}^{B}

(no ``\sigma`` after the last layer; dropout between layers as in :func:`~graph_mtl.models.heads.mlp`). Each head
is initialised as ``nn.Linear`` initialises itself (weights and bias uniform in ``+-1/sqrt(in_k)``), so a grouped
head is distributed as ``T`` separate ones.

The input is ``[T, B, in]``: row ``t`` is what head ``t`` reads. The model passes the pooled graph
representation expanded once per task (a view, no copy), so that row ``t`` of that tensor is read by task ``t``
alone: one backward of the summed losses then gives every task's gradient at the shared representation
(see :class:`graph_mtl.engine.gradients.TaskRows`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GroupedGraphHeads(nn.Module):
    """``num_heads`` graph heads of ``num_layers`` linear layers and one output each (module docstring).

    Args:
        in_channels: width of the pooled graph representation.
        num_heads: the number of heads ``T``.
        hidden: width of the hidden layers.
        num_layers: linear layers per head.
        dropout: dropout between layers.
    """

    def __init__(self, in_channels: int, num_heads: int, hidden: int = 128, num_layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"head.num_layers: must be >= 1, got {num_layers}")
        widths = [in_channels] + [hidden] * (num_layers - 1) + [1]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_heads, a, b)) for a, b in zip(widths, widths[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_heads, 1, b)) for b in widths[1:])
        self.dropout = nn.Dropout(dropout)
        self.num_heads = num_heads
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every head as ``nn.Linear`` initialises itself: uniform in ``+-1/sqrt(fan_in)``."""
        for weight, bias in zip(self.weights, self.biases):
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, rows: Tensor) -> Tensor:
        """Predictions ``[B, T]`` from ``rows [T, B, in]`` (row ``t`` is head ``t``'s input)."""
        if rows.dim() != 3 or rows.shape[0] != self.num_heads:
            raise ValueError(f"grouped heads: expected input [{self.num_heads}, B, in], got {list(rows.shape)}")
        h = rows
        last = len(self.weights) - 1
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias.to(h.dtype), h, weight.to(h.dtype))
            if k < last:
                h = self.dropout(torch.relu(h))
        return h.squeeze(-1).T

    def extra_repr(self) -> str:
        shapes = " -> ".join(str(w.shape[1]) for w in self.weights) + " -> 1"
        return f"heads={self.num_heads}, {shapes}"
