"""The shared GNN encoder: input encoders, a stack of PyG message-passing layers, virtual node, JK."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import Tensor, nn
from torch_geometric.nn import (
    GATConv,
    GATv2Conv,
    GCNConv,
    GINConv,
    GINEConv,
    NNConv,
    PNAConv,
    SAGEConv,
    global_add_pool,
    global_mean_pool,
)

CONVS: tuple[str, ...] = ("gcn", "gin", "gine", "gat", "gatv2", "sage", "pna", "nnconv")
#: convs whose PyG layer consumes edge features (``edge_attr``)
EDGE_CONVS: frozenset[str] = frozenset({"gine", "gat", "gatv2", "pna", "nnconv"})
#: convs that need edge features (no meaningful layer without them)
NEEDS_EDGES: frozenset[str] = frozenset({"gine", "nnconv"})
#: width of the hidden layer of nnconv's edge network (PyG's qm9_nn_conv example)
EDGE_NET_HIDDEN = 128
NORMS: tuple[str, ...] = ("batch", "layer", "none")
JK_MODES: tuple[str, ...] = ("last", "sum", "max", "cat")
NODE_ENCODERS: tuple[str, ...] = ("linear", "atom")
EDGE_ENCODERS: tuple[str, ...] = ("none", "linear", "bond")


class RowBatchNorm(nn.BatchNorm1d):
    """Batch norm that also accepts a single row in training (it then normalises with the running statistics).

    The virtual-node MLP sees one row per graph, and a batch holding one graph is common (the last batch of
    an epoch, a single-graph node dataset), where plain batch norm cannot estimate a variance.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.size(0) < 2:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            training=False, eps=self.eps)
        return super().forward(x)


def _mlp(channels: int, hidden: int, norm: str = "batch") -> nn.Sequential:
    """``channels -> hidden -> channels`` with ReLU after a norm of the hidden layer: ``batch`` (over the rows,
    one row may be alone), or ``layer``."""
    layer = RowBatchNorm(hidden) if norm == "batch" else nn.LayerNorm(hidden)
    return nn.Sequential(nn.Linear(channels, hidden), layer, nn.ReLU(), nn.Linear(hidden, channels))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    return nn.Identity()


def _make_conv(conv: str, hidden: int, edge_dim: int | None, heads: int, deg: Tensor | None) -> nn.Module:
    """One PyG message-passing layer ``hidden -> hidden`` of the named kind."""
    if conv == "gcn":
        return GCNConv(hidden, hidden)
    if conv == "sage":
        return SAGEConv(hidden, hidden)
    if conv == "gin":
        return GINConv(_mlp(hidden, 2 * hidden), train_eps=True)
    if conv == "gine":
        return GINEConv(_mlp(hidden, 2 * hidden), train_eps=True, edge_dim=edge_dim)
    if conv in ("gat", "gatv2"):
        layer = GATConv if conv == "gat" else GATv2Conv
        return layer(hidden, hidden // heads, heads=heads, edge_dim=edge_dim)
    if conv == "nnconv":
        raise ValueError("encoder.conv: 'nnconv' is built by _nnconv (one layer shared by every round)")
    if deg is None:
        raise ValueError("encoder.pna_deg: conv 'pna' needs the in-degree histogram of the training graphs")
    return PNAConv(hidden, hidden, aggregators=["mean", "min", "max", "std"],
                   scalers=["identity", "amplification", "attenuation"], deg=deg, edge_dim=edge_dim)


def _nnconv(hidden: int, edge_encoder: str, edge_channels: int) -> NNConv:
    r"""NNConv ``hidden -> hidden`` with mean aggregation, :math:`m_i = W h_i + \mathrm{mean}_{j \in N(i)}
    f(e_{ji}) h_j`, whose edge network :math:`f(e) = \mathrm{Lin}(\mathrm{ReLU}(\mathrm{enc}(e)))` maps each edge's
    features to a ``hidden x hidden`` matrix (``enc``: linear map of float features or OGB's bond embedding)."""
    edge_net = nn.Sequential(_edge_encoder(edge_encoder, edge_channels, EDGE_NET_HIDDEN), nn.ReLU(),
                             nn.Linear(EDGE_NET_HIDDEN, hidden * hidden))
    return NNConv(hidden, hidden, edge_net, aggr="mean")


class GNNEncoder(nn.Module):
    r"""Shared encoder mapping a graph batch to node embeddings.

    Layer :math:`l` computes :math:`h^{l+1} = \mathrm{drop}(\sigma(\mathrm{norm}(\mathrm{conv}(h^l + v^l[b]))))`
    (:math:`+\,h^l` with ``residual``), where :math:`v^l` is the virtual-node state of each graph (zero without
    ``virtual_node``), updated as :math:`v^{l+1} = v^l + \mathrm{MLP}(\sum_{n \in g} (h^l_n + v^l_g) + v^l)`.
    The last layer has no activation (as in the OGB baselines). The output combines the layer outputs by
    jumping knowledge (``last``, ``sum``, ``max`` or ``cat``).

    ``conv="nnconv"`` is Gilmer et al.'s MPNN as in PyG's ``qm9_nn_conv`` example: :math:`h^0 =
    \mathrm{ReLU}(\mathrm{enc}(x))`, then every round applies the *same* NNConv (one edge network, see
    :func:`_nnconv`) and a GRU update, :math:`h^{l+1} = \mathrm{GRU}(\mathrm{ReLU}(\mathrm{conv}(h^l + v^l[b])),
    h^l + v^l[b])`; the GRU's gate takes the place of ``norm`` and ``residual``, which it ignores.

    Args:
        in_channels: width of float node features (ignored for ``node_encoder="atom"``).
        hidden: embedding width of every layer.
        num_layers: number of message-passing layers.
        conv: one of :data:`CONVS`.
        node_encoder: ``"linear"`` for float features, ``"atom"`` for OGB's 9 integer atom features.
        edge_encoder: ``"none"``, ``"linear"`` (float edge features of width ``edge_channels``) or ``"bond"``
            (OGB's 3 integer bond features); used only by convs in :data:`EDGE_CONVS`.
        edge_channels: width of float edge features.
        virtual_node: add a per-graph virtual node connected to every node.
        residual: add each layer's input to its output.
        norm: ``"batch"``, ``"layer"`` or ``"none"``.
        dropout: dropout probability after every layer.
        jk: jumping-knowledge mode.
        heads: attention heads of gat/gatv2 (``hidden`` must be divisible by it).
        pna_deg: in-degree histogram for PNA (``torch_geometric.utils.degree`` counts of the training graphs).
        vn_norm: norm inside the virtual-node MLP, ``"batch"`` (over graphs, as OGB) or ``"layer"``.
        vn_pool: how the virtual node reads the nodes, ``"add"`` (OGB; the sum above, which grows with the graph)
            or ``"mean"`` (:math:`\frac{1}{|g|} \sum_{n \in g}`, bounded in the size, for node read-outs that must
            extrapolate to larger graphs).
    """

    def __init__(
        self,
        in_channels: int = 0,
        hidden: int = 128,
        num_layers: int = 3,
        conv: str = "gin",
        node_encoder: str = "linear",
        edge_encoder: str = "none",
        edge_channels: int = 0,
        virtual_node: bool = False,
        residual: bool = True,
        norm: str = "batch",
        dropout: float = 0.0,
        jk: str = "last",
        heads: int = 4,
        pna_deg: Tensor | None = None,
        vn_norm: str = "batch",
        vn_pool: str = "add",
    ) -> None:
        super().__init__()
        _check_choice("encoder.conv", conv, CONVS)
        _check_choice("encoder.norm", norm, NORMS)
        _check_choice("encoder.jk", jk, JK_MODES)
        _check_choice("encoder.vn_norm", vn_norm, ("batch", "layer"))
        _check_choice("encoder.vn_pool", vn_pool, ("add", "mean"))
        _check_choice("encoder.node_encoder", node_encoder, NODE_ENCODERS)
        _check_choice("encoder.edge_encoder", edge_encoder, EDGE_ENCODERS)
        if num_layers < 1:
            raise ValueError(f"encoder.num_layers: must be >= 1, got {num_layers}")
        if hidden < 1:
            raise ValueError(f"encoder.hidden: must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"encoder.dropout: must be in [0, 1), got {dropout}")
        if conv in ("gat", "gatv2") and hidden % heads:
            raise ValueError(f"encoder.heads: hidden={hidden} must be divisible by heads={heads}")
        if node_encoder == "linear" and in_channels < 1:
            raise ValueError("encoder.in_channels: float node features need in_channels >= 1")
        if edge_encoder == "linear" and edge_channels < 1:
            raise ValueError("encoder.edge_channels: edge_encoder 'linear' needs edge_channels >= 1")
        uses_edges = conv in EDGE_CONVS and edge_encoder != "none"
        if conv in NEEDS_EDGES and not uses_edges:
            raise ValueError(f"encoder.conv: {conv!r} needs edge features; the data has none, use 'gin'")
        mpnn = conv == "nnconv"

        self.conv_name, self.hidden, self.num_layers = conv, hidden, num_layers
        self.residual, self.dropout, self.jk = residual, dropout, jk
        self.uses_edges = uses_edges
        self.node_encoder = AtomEncoder(hidden) if node_encoder == "atom" else nn.Linear(in_channels, hidden)
        edge_dim = hidden if uses_edges else None
        self.edge_encoders = nn.ModuleList(
            [_edge_encoder(edge_encoder, edge_channels, hidden) for _ in range(num_layers)]
            if uses_edges and not mpnn else []
        )
        if mpnn:  # one conv and one GRU shared by every round
            self.convs = nn.ModuleList([_nnconv(hidden, edge_encoder, edge_channels)])
        else:
            self.convs = nn.ModuleList(_make_conv(conv, hidden, edge_dim, heads, pna_deg) for _ in range(num_layers))
        self.gru = nn.GRUCell(hidden, hidden) if mpnn else None
        self.norms = nn.ModuleList(_norm("none" if mpnn else norm, hidden) for _ in range(num_layers))
        self.virtual_node = nn.Embedding(1, hidden) if virtual_node else None
        self.vn_pool = global_mean_pool if vn_pool == "mean" else global_add_pool
        # a norm in the virtual-node MLP: without one the summed pooling makes the virtual node explode early
        # on (first demo epoch's loss 2196). Batch norm (as in OGB) by default: layer norm normalises each
        # graph's row by itself and so erases the graph size that the sum carries (demo test RMSE of tpsa,
        # an additive property: 42 with layer norm, see the README)
        self.vn_mlps = (nn.ModuleList(_mlp(hidden, 2 * hidden, vn_norm) for _ in range(num_layers - 1))
                        if virtual_node else None)
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        """Width of the node embeddings returned by :meth:`forward`."""
        return self.hidden * self.num_layers if self.jk == "cat" else self.hidden

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.virtual_node is not None:
            nn.init.zeros_(self.virtual_node.weight)

    def last_layer(self) -> nn.Module:
        """The last shared layer of weights, GradNorm's ``W``: the last conv, or for GIN/GINE its MLP's output
        ``Linear`` (the gradient there needs no backward through the rest of the conv, so ``T`` of them stay
        cheap: GradNorm's step went from 2.0x to ~1.1x equal weighting's in ``benchmarks/step_time.py``); for
        nnconv the GRU of the update."""
        if self.gru is not None:
            return self.gru
        last = self.convs[-1]
        return last.nn[-1] if isinstance(last, (GINConv, GINEConv)) else last

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                batch: Tensor | None = None, num_graphs: int | None = None) -> Tensor:
        """Node embeddings ``[num_nodes, out_channels]``."""
        batch, num_graphs = _batch_vector(x, batch, num_graphs)
        h, vn = self.begin(x, num_graphs)
        outputs: list[Tensor] = []
        for layer in range(self.num_layers):
            h, vn = self.layer(layer, h, vn, edge_index, edge_attr, batch, num_graphs)
            outputs.append(h)
        return self.readout(outputs)

    def begin(self, x: Tensor, num_graphs: int) -> tuple[Tensor, Tensor | None]:
        """The layer-wise API's start (:meth:`forward` is ``begin``, :meth:`layer` for every layer, :meth:`readout`):
        the input embedding :math:`h^0` and the virtual-node state :math:`v^0` (``None`` without one)."""
        h = self.node_encoder(x if x.dtype == torch.long else x.float())
        if self.gru is not None:
            h = torch.relu(h)
        vn = self.virtual_node.weight.expand(num_graphs, -1) if self.virtual_node is not None else None
        return h, vn

    def layer(self, layer: int, h: Tensor, vn: Tensor | None, edge_index: Tensor, edge_attr: Tensor | None,
              batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor | None]:
        """Message-passing layer ``layer``: :math:`(h^l, v^l) \\mapsto (h^{l+1}, v^{l+1})` (see the class docstring)."""
        h_in = h if vn is None else h + vn[batch]
        out = self._conv(layer, h_in, edge_index, edge_attr)
        if self.gru is not None:
            out = self.gru(torch.relu(out), h_in)
        else:
            out = self.norms[layer](out)
            if layer < self.num_layers - 1:
                out = torch.relu(out)
        out = nn.functional.dropout(out, self.dropout, self.training)
        if self.residual and self.gru is None:
            out = out + h_in
        if vn is not None and layer < self.num_layers - 1:
            pooled = self.vn_pool(h_in, batch, size=num_graphs)
            vn = vn + nn.functional.dropout(self.vn_mlps[layer](pooled + vn), self.dropout, self.training)
        return out, vn

    def readout(self, outputs: list[Tensor]) -> Tensor:
        """The layer outputs combined by jumping knowledge."""
        return _jumping_knowledge(self.jk, outputs)

    def _conv(self, layer: int, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> Tensor:
        conv = self.convs[0 if self.gru is not None else layer]
        if not self.uses_edges:
            return conv(h, edge_index)
        if edge_attr is None:
            raise ValueError(f"encoder: conv {self.conv_name!r} was built for edge features but the batch has none")
        if self.gru is not None:  # nnconv encodes the edge features inside its edge network
            return conv(h, edge_index, edge_attr)
        return conv(h, edge_index, self.edge_encoders[layer](edge_attr))

    def __repr__(self) -> str:
        vn = ", virtual_node=True" if self.virtual_node is not None else ""
        name = type(self).__name__
        return f"{name}({self.conv_name}, hidden={self.hidden}, layers={self.num_layers}{vn}, jk={self.jk})"


def _batch_vector(x: Tensor, batch: Tensor | None, num_graphs: int | None) -> tuple[Tensor, int]:
    """The graph index of every node (all zeros without ``batch``) and the number of graphs."""
    if batch is None:
        return x.new_zeros(x.size(0), dtype=torch.long), 1
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return batch, num_graphs


def _edge_encoder(kind: str, channels: int, hidden: int) -> nn.Module:
    if kind == "bond":
        return BondEncoder(hidden)
    return _FloatEdgeEncoder(channels, hidden)


class _FloatEdgeEncoder(nn.Linear):
    """Linear map of float edge features (integer tensors are cast first)."""

    def forward(self, edge_attr: Tensor) -> Tensor:
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        return super().forward(edge_attr.float())


_JK: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "last": lambda xs: xs[-1],
    "sum": lambda xs: torch.stack(xs).sum(0),
    "max": lambda xs: torch.stack(xs).max(0).values,
    "cat": lambda xs: torch.cat(xs, dim=-1),
}


def _jumping_knowledge(mode: str, outputs: list[Tensor]) -> Tensor:
    return _JK[mode](outputs)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}: unknown value {value!r}; choose one of {list(choices)}")
