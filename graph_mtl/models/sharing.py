r"""Sharing architectures beyond one shared encoder: trunks mapping a graph batch to one node representation per task.

``model.arch`` picks one (``hard``, the default, is :class:`~graph_mtl.models.GNNEncoder` itself, shared by every
task, and needs no trunk). Every column or expert below is a :class:`~graph_mtl.models.GNNEncoder` built from the same
model config (``make_encoder(**overrides)``). A trunk tells the step engine what is shared:

* :meth:`Trunk.shared_parameters`: the parameters more than one task's loss depends on (what gradient methods
  balance);
* :meth:`Trunk.task_parameters`: task ``t``'s own ones (its column, gate, experts), which get the plain gradient of
  its loss like its head;
* :attr:`TrunkOutput.balancer_reprs`: tensors ``Z`` through which every path from a shared parameter to a loss
  passes (``grad_mode: rep`` takes each task's gradient there);
* :meth:`Trunk.regularizer`: a penalty that is not a task (soft sharing), added to ``.grad`` after the balancer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_mean_pool

from graph_mtl.models.encoder import GNNEncoder

ARCHS: tuple[str, ...] = ("hard", "soft", "cross_stitch", "mmoe", "cgc", "ple")
SOFT_TARGETS: tuple[str, ...] = ("pairwise", "mean")
#: cross-stitch units start as ``STITCH_SELF`` on the diagonal and ``(1 - STITCH_SELF) / (T - 1)`` elsewhere
#: (Misra et al. 2016)
STITCH_SELF = 0.9

EncoderFactory = Callable[..., GNNEncoder]


@dataclass
class TrunkOutput:
    """``task_reprs[t]``: task ``t``'s node representation ``[N, width]``; ``balancer_reprs``: the shared ``Z``."""

    task_reprs: list[Tensor]
    balancer_reprs: list[Tensor]


class Trunk(nn.Module):
    """Base of the sharing architectures: a graph batch -> one node representation per task."""

    arch: str = ""

    def __init__(self, num_tasks: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        #: width of each task's representation; ``hidden``: the experts' layer width (the heads' default)
        self.out_channels, self.hidden = out_channels, hidden

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, batch: Tensor,
                num_graphs: int) -> TrunkOutput:
        raise NotImplementedError

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def task_parameters(self, t: int) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def regularizer(self) -> Tensor | None:
        """A penalty added to the training objective outside the balancer (``None``: none)."""
        return None

    def extra_repr(self) -> str:  # the module tree is long; the run's log line names the architecture only
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return ""


def _params(modules: Sequence[nn.Module]) -> Iterator[nn.Parameter]:
    return itertools.chain.from_iterable(m.parameters() for m in modules)


class SoftSharing(Trunk):
    r"""Soft parameter sharing (Duong et al. 2015): one encoder column :math:`\theta_t` per task, nothing shared, and
    the penalty

    .. math:: R = \lambda \sum_{i<j} \lVert\theta_i - \theta_j\rVert^2 \;(\texttt{pairwise}) \quad\text{or}\quad
              R = \lambda \sum_i \lVert\theta_i - \bar\theta\rVert^2 \;(\texttt{mean}),\;
              \bar\theta = \tfrac1T \sum_i \theta_i,

    summed over every pair of corresponding encoder parameters (``model.soft_l2`` is :math:`\lambda`). Computed as
    :math:`\sum_{i<j} \lVert\theta_i - \theta_j\rVert^2 = T \sum_i \lVert\theta_i - \bar\theta\rVert^2` (linear in
    ``T``). The columns start equal (a copy of the first), so training starts as hard sharing with ``R = 0`` and the
    tasks pull their columns apart against the penalty. ``R`` is not a task: the trainer adds its gradient after the
    balancer's step. With nothing shared, gradient methods have nothing to balance (the trainer refuses them).
    """

    arch = "soft"

    def __init__(self, make_encoder: EncoderFactory, num_tasks: int, l2: float = 0.01,
                 target: str = "pairwise") -> None:
        if target not in SOFT_TARGETS:
            raise ValueError(f"model.soft_target: unknown value {target!r}; choose one of {list(SOFT_TARGETS)}")
        if l2 < 0:
            raise ValueError(f"model.soft_l2: must be >= 0, got {l2}")
        columns = [make_encoder() for _ in range(num_tasks)]
        for column in columns[1:]:
            column.load_state_dict(columns[0].state_dict())
        super().__init__(num_tasks, columns[0].out_channels, columns[0].hidden)
        self.columns = nn.ModuleList(columns)
        self.l2, self.target = l2, target

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, batch: Tensor,
                num_graphs: int) -> TrunkOutput:
        return TrunkOutput([c(x, edge_index, edge_attr, batch, num_graphs) for c in self.columns], [])

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def task_parameters(self, t: int) -> Iterator[nn.Parameter]:
        return self.columns[t].parameters()

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def regularizer(self) -> Tensor | None:
        if self.l2 == 0 or self.num_tasks < 2:
            return None
        total = None
        for group in zip(*(c.parameters() for c in self.columns)):
            stacked = torch.stack(group)
            term = (stacked - stacked.mean(0)).square().sum()
            total = term if total is None else total + term
        scale = self.num_tasks if self.target == "pairwise" else 1
        return self.l2 * scale * total

    def describe(self) -> str:
        return f"{self.num_tasks} columns of {self.columns[0]!r}, soft_l2={self.l2}, {self.target}"


class CrossStitch(Trunk):
    r"""Cross-stitch networks (Misra et al. 2016) over GNN columns: ``T`` encoders of the same layer structure, and
    after every message-passing layer :math:`l` the tasks' node representations are mixed,

    .. math:: h_t^l \leftarrow \sum_s a^l_{ts} h_s^l,

    with a learned ``T x T`` matrix :math:`A^l` per layer, initialised to ``0.9`` on the diagonal and
    ``0.1 / (T - 1)`` elsewhere. Row :math:`a^l_t` is the parameter ``stitch.{l}.{t}``. Each column keeps its own
    virtual-node state. ``jk`` must be ``last`` (the output of column ``t`` is its last mixed layer).

    Shared: every column and the rows of every stitch but the last (each task's loss depends on all of them); task
    ``t``'s own: row ``t`` of the last stitch. ``Z`` (rep mode): the columns' last-layer outputs before the final
    mix, stacked ``[T, N, width]``; every path from a shared parameter to a loss passes through it.
    """

    arch = "cross_stitch"

    def __init__(self, make_encoder: EncoderFactory, num_tasks: int) -> None:
        columns = [make_encoder() for _ in range(num_tasks)]
        if columns[0].jk != "last":
            raise ValueError(f"model.jk: cross_stitch mixes every layer's output, so it needs jk 'last', got "
                             f"{columns[0].jk!r}")
        super().__init__(num_tasks, columns[0].out_channels, columns[0].hidden)
        self.columns = nn.ModuleList(columns)
        off = (1 - STITCH_SELF) / (num_tasks - 1) if num_tasks > 1 else 0.0
        init = torch.full((num_tasks, num_tasks), off).fill_diagonal_(STITCH_SELF if num_tasks > 1 else 1.0)
        self.stitch = nn.ModuleList(nn.ParameterList(nn.Parameter(row.clone()) for row in init)
                                    for _ in range(columns[0].num_layers))

    def stitch_matrix(self, layer: int) -> Tensor:
        """:math:`A^l`, ``[T, T]``."""
        return torch.stack(list(self.stitch[layer]))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, batch: Tensor,
                num_graphs: int) -> TrunkOutput:
        states = [c.begin(x, num_graphs) for c in self.columns]
        hs = [h for h, _ in states]
        vns = [vn for _, vn in states]
        stacked = None
        for layer in range(len(self.stitch)):
            out = [c.layer(layer, h, vn, edge_index, edge_attr, batch, num_graphs)
                   for c, h, vn in zip(self.columns, hs, vns)]
            vns = [vn for _, vn in out]
            stacked = torch.stack([h for h, _ in out])  # [T, N, width]
            mixed = torch.einsum("ts,snw->tnw", self.stitch_matrix(layer), stacked)
            hs = list(mixed.unbind(0))
        return TrunkOutput(hs, [stacked])

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return itertools.chain(_params(self.columns), _params(self.stitch[:-1]))

    def task_parameters(self, t: int) -> Iterator[nn.Parameter]:
        return iter([self.stitch[-1][t]])

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        return _params([c.last_layer() for c in self.columns])

    def describe(self) -> str:
        return f"{self.num_tasks} columns of {self.columns[0]!r}"


class _Level(nn.Module):
    """One CGC level: ``K`` shared experts, ``m`` experts per task, a softmax gate per task over the shared experts
    and its own, and (``shared_gate``, inner levels) a gate over every expert of the level; an inner level without task
    experts has no task gates (nothing would read their mixtures)."""

    def __init__(self, make_expert: Callable[[], GNNEncoder], num_tasks: int, experts: int, task_experts: int,
                 shared_gate: bool) -> None:
        super().__init__()
        self.shared = nn.ModuleList(make_expert() for _ in range(experts))
        self.own = nn.ModuleList(nn.ModuleList(make_expert() for _ in range(task_experts)) for _ in range(num_tasks))
        width = self.shared[0].out_channels
        task_gates = num_tasks if task_experts or not shared_gate else 0
        self.gates = nn.ModuleList(nn.Linear(width, experts + task_experts) for _ in range(task_gates))
        self.shared_gate = nn.Linear(width, experts + num_tasks * task_experts) if shared_gate else None


def _gated(gate: nn.Linear, experts: Tensor, batch: Tensor | None, num_graphs: int) -> tuple[Tensor, Tensor]:
    r"""``(sum_e g_e H_e, g)`` for the experts ``H`` ``[E, N, width]``, :math:`g = \mathrm{softmax}(W u + b)`, with
    ``u`` the experts' mean per node, or per graph when ``batch`` is given (one gate per graph)."""
    u = experts.mean(0)
    if batch is not None:
        g = torch.softmax(gate(global_mean_pool(u, batch, size=num_graphs)), dim=-1)
        return torch.einsum("ne,enw->nw", g[batch], experts), g
    g = torch.softmax(gate(u), dim=-1)
    return torch.einsum("ne,enw->nw", g, experts), g


class ExpertMixture(Trunk):
    r"""Gated mixtures of GNN experts: MMoE (Ma et al. 2018), CGC and PLE (Tang et al. 2020); ``levels`` stacked
    CGC levels, each with ``K`` shared experts and ``m`` experts per task.

    At level :math:`l` task ``t``'s gate mixes the shared experts and its own,
    :math:`x_t^l = \sum_e g^l_{te} H^l_e`, :math:`g^l_t = \mathrm{softmax}(W^l_t u + b^l_t)`; at inner levels a
    shared gate mixes every expert of the level, :math:`s^l = \sum_e g^l_{se} H^l_e`. Level 1's experts read the
    batch; at level :math:`l > 1` shared experts read :math:`s^{l-1}` and task ``t``'s experts :math:`x_t^{l-1}` as
    node features (a linear input map, then their message-passing layers). ``model.num_layers`` is split over the
    levels (PLE's depth is the hard model's); MMoE is one level with ``m = 0``, CGC one level.

    Gate input :math:`u`: the mean of the experts the gate mixes, per node, so the gate sees the node's
    neighbourhood as the experts encode it (OGB's integer atom features have no common float embedding to read);
    for a graph-level task the last level's gate reads the graph's mean of that, one gate per graph, which is MMoE's
    per-sample gate (a graph's prediction pools one mixture of its nodes). :attr:`last_gates` keeps the last
    forward's gates.

    Shared: every parameter of the inner levels (the shared gates read every expert) and the last level's shared
    experts; task ``t``'s own: its last-level experts and gate. ``Z`` (rep mode): the last level's shared experts'
    outputs stacked ``[K, N, width]`` and, with inner levels and task experts, every :math:`x_t^{L-1}`.
    """

    arch = "mmoe"

    def __init__(self, make_encoder: EncoderFactory, graph_level: Sequence[bool], num_layers: int,
                 experts: int = 4, task_experts: int = 0, levels: int = 1) -> None:
        if experts < 1:
            raise ValueError(f"model.experts: must be >= 1, got {experts}")
        if task_experts < 0:
            raise ValueError(f"model.task_experts: must be >= 0, got {task_experts}")
        if not 1 <= levels <= num_layers:
            raise ValueError(f"model.ple_levels: must be between 1 and model.num_layers={num_layers}, got {levels}")
        depth = [num_layers // levels + (i < num_layers % levels) for i in range(levels)]
        built: list[_Level] = []
        for i, layers in enumerate(depth):
            width = built[-1].shared[0].out_channels if built else None

            def make_expert(layers: int = layers, width: int | None = width) -> GNNEncoder:
                if width is None:
                    return make_encoder(num_layers=layers)
                return make_encoder(num_layers=layers, in_channels=width, node_encoder="linear")

            built.append(_Level(make_expert, len(graph_level), experts, task_experts, i < levels - 1))
        super().__init__(len(graph_level), built[-1].shared[0].out_channels, built[-1].shared[0].hidden)
        self.levels = nn.ModuleList(built)
        self.graph_level = list(graph_level)
        self.experts, self.task_experts = experts, task_experts
        self.last_gates: list[Tensor] = []

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, batch: Tensor,
                num_graphs: int) -> TrunkOutput:
        args = (edge_index, edge_attr, batch, num_graphs)
        shared_in, task_in = x, [x] * self.num_tasks
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            shared = torch.stack([e(shared_in, *args) for e in level.shared])  # [K, N, width]
            own = [[e(task_in[t], *args) for e in experts] for t, experts in enumerate(level.own)]
            reprs, gates = [], []
            for t, gate in enumerate(level.gates):
                mixed = torch.cat([shared, torch.stack(own[t])]) if own[t] else shared
                pooled = batch if i == last and self.graph_level[t] else None
                r, g = _gated(gate, mixed, pooled, num_graphs)
                reprs.append(r)
                gates.append(g)
            if i == last:
                self.last_gates = [g.detach() for g in gates]
                return TrunkOutput(reprs, [shared, *task_in] if i > 0 and self.task_experts else [shared])
            every = torch.cat([shared, *(torch.stack(o) for o in own if o)])
            shared_in, task_in = _gated(level.shared_gate, every, None, num_graphs)[0], reprs or task_in
        raise AssertionError("unreachable: a mixture has at least one level")

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return itertools.chain(_params(self.levels[:-1]), self.levels[-1].shared.parameters())

    def task_parameters(self, t: int) -> Iterator[nn.Parameter]:
        last = self.levels[-1]
        return itertools.chain(last.own[t].parameters(), last.gates[t].parameters())

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        return _params([e.last_layer() for e in self.levels[-1].shared])

    def describe(self) -> str:
        own = f", {self.task_experts} per task" if self.task_experts else ""
        levels = f", {len(self.levels)} levels" if len(self.levels) > 1 else ""
        return f"{self.experts} shared experts{own}{levels} of {self.levels[0].shared[0]!r}"


class MMoE(ExpertMixture):
    """Multi-gate mixture of experts: one level of ``experts`` shared experts (see :class:`ExpertMixture`)."""

    arch = "mmoe"

    def __init__(self, make_encoder: EncoderFactory, graph_level: Sequence[bool], num_layers: int,
                 experts: int = 4) -> None:
        super().__init__(make_encoder, graph_level, num_layers, experts, 0, 1)


class CGC(ExpertMixture):
    """Customised gate control: one level of shared and task-specific experts (see :class:`ExpertMixture`)."""

    arch = "cgc"

    def __init__(self, make_encoder: EncoderFactory, graph_level: Sequence[bool], num_layers: int,
                 experts: int = 4, task_experts: int = 1) -> None:
        super().__init__(make_encoder, graph_level, num_layers, experts, task_experts, 1)


class PLE(ExpertMixture):
    """Progressive layered extraction: ``levels`` stacked CGC levels (see :class:`ExpertMixture`)."""

    arch = "ple"


def build_trunk(arch: str, make_encoder: EncoderFactory, graph_level: Sequence[bool], num_layers: int, *,
                soft_l2: float = 0.01,
                soft_target: str = "pairwise", experts: int = 4, task_experts: int = 1, ple_levels: int = 2) -> Trunk:
    """The trunk of ``arch`` (any of :data:`ARCHS` but ``hard``) for tasks whose levels are ``graph_level``;
    ``make_encoder(**overrides)`` builds one column or expert of ``num_layers`` layers from the model config."""
    num_tasks = len(graph_level)
    if arch == "soft":
        return SoftSharing(make_encoder, num_tasks, soft_l2, soft_target)
    if arch == "cross_stitch":
        return CrossStitch(make_encoder, num_tasks)
    if arch == "mmoe":
        return MMoE(make_encoder, graph_level, num_layers, experts)
    if arch == "cgc":
        return CGC(make_encoder, graph_level, num_layers, experts, task_experts)
    if arch == "ple":
        return PLE(make_encoder, graph_level, num_layers, experts, task_experts, ple_levels)
    raise ValueError(f"model.arch: unknown value {arch!r}; choose one of {list(ARCHS)}")
