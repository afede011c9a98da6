"""A generated single-graph node dataset: a stochastic block model with noisy features and three node tasks.

The graph has ``num_blocks`` equal blocks; an edge joins two nodes of the same block with probability
``p_in`` and of different blocks with ``p_out``, chosen so the expected degree is ``avg_degree`` and the
expected fraction of within-block edges is ``homophily``. Features are ``x_i = mu_{b(i)} + noise * eps_i``
with ``mu_b, eps_i ~ N(0, I)``, so a node's block is only partly readable from its own features (with the
defaults a nearest-block-mean rule on ``x_i`` is right for ~66% of nodes); its neighbours, mostly of the same
block, help (~85% after averaging ``x`` with the neighbours' mean).

Labels in ``y_node`` (float, ``NaN`` = missing):

====================  ==========  ===================================================================
task                  kind        definition
====================  ==========  ===================================================================
``block``             multiclass  the block ``b(i)``
``cross_degree``      binary      1 if node ``i`` has more neighbours in other blocks than the median node
``neighbour_mean``    regression  ``mean_{j in N(i)} h_j`` with ``h_j = w . x_j``, ``w ~ N(0, I / F)``;
                                  ``NaN`` for an isolated node
====================  ==========  ===================================================================

Every split holds the same graph with a boolean ``node_mask`` (a random 60/20/20 partition of the nodes).
The same arguments always give the same dataset; torch's global random state is left untouched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import degree, scatter, stochastic_blockmodel_graph

from graph_mtl.data.base import SPLITS, MultiTaskDataset
from graph_mtl.data.splits import check_fractions, random_split
from graph_mtl.tasks import Task

NODE_COLUMNS: tuple[str, ...] = ("block", "cross_degree", "neighbour_mean")
#: above this many nodes the graph comes from :func:`sparse_sbm_edges` (PyG's generator samples every pair)
DENSE_LIMIT = 20_000
SBM_FRACTIONS = (0.6, 0.2, 0.2)


def sbm_tasks(num_blocks: int) -> list[Task]:
    """The three node tasks of :func:`load_sbm`, reading columns of ``y_node``."""
    return [
        Task("block", "node", "multiclass", num_blocks, target="y_node", columns=(0,)),
        Task("cross_degree", "node", "binary", target="y_node", columns=(1,)),
        Task("neighbour_mean", "node", "regression", target="y_node", columns=(2,)),
    ]


def block_sizes(num_nodes: int, num_blocks: int) -> list[int]:
    """``num_blocks`` sizes summing to ``num_nodes``, differing by at most one (larger blocks first)."""
    base, extra = divmod(num_nodes, num_blocks)
    return [base + (b < extra) for b in range(num_blocks)]


def edge_probabilities(sizes: list[int], avg_degree: float, homophily: float) -> tuple[float, float]:
    """``(p_in, p_out)`` for expected degree ``avg_degree`` with a ``homophily`` share of within-block edges.

    For a node of a block of size ``s`` in ``n`` nodes: ``p_in (s - 1) = homophily * d`` and
    ``p_out (n - s) = (1 - homophily) * d`` (with the mean block size; clipped to ``[0, 1]``).
    """
    n, s = sum(sizes), sum(sizes) / len(sizes)
    p_in = homophily * avg_degree / max(s - 1, 1)
    p_out = (1 - homophily) * avg_degree / max(n - s, 1)
    return min(p_in, 1.0), min(p_out, 1.0)


def _check_args(num_nodes: int, num_blocks: int, avg_degree: float, homophily: float, features: int) -> None:
    """One-line ``ValueError`` for an impossible generator setting."""
    if num_blocks < 2:
        raise ValueError(f"num_blocks: need at least 2 blocks, got {num_blocks}")
    if num_nodes < 2 * num_blocks:
        raise ValueError(f"num_nodes: need at least 2 nodes per block ({2 * num_blocks}), got {num_nodes}")
    if not (math.isfinite(avg_degree) and avg_degree > 0):
        raise ValueError(f"avg_degree: must be a finite number > 0, got {avg_degree}")
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"homophily: must lie in [0, 1], got {homophily}")
    if features < 1:
        raise ValueError(f"num_features: must be >= 1, got {features}")


def sparse_sbm_edges(sizes: list[int], p_in: float, p_out: float, seed: int) -> Tensor:
    """Undirected block-model edges in memory linear in the edges (both directions, sorted, no self-loops).

    For each block pair the number of edges is drawn from the binomial of its node pairs, then that many
    endpoint pairs are drawn uniformly; repeats and self-loops are dropped, so the graph is a simple graph whose
    edge counts match the block model up to the rare repeats (a fraction ``~ p`` of the draws).
    """
    gen = torch.Generator().manual_seed(seed)
    starts = torch.tensor([0, *sizes]).cumsum(0).tolist()
    parts = []
    for a in range(len(sizes)):
        for b in range(a, len(sizes)):
            pairs = sizes[a] * (sizes[a] - 1) // 2 if a == b else sizes[a] * sizes[b]
            p = p_in if a == b else p_out
            count = int(torch.binomial(torch.tensor(float(pairs)), torch.tensor(p), generator=gen))
            src = starts[a] + torch.randint(sizes[a], (count,), generator=gen)
            dst = starts[b] + torch.randint(sizes[b], (count,), generator=gen)
            parts.append(torch.stack([src, dst]))
    edges = torch.cat(parts, dim=1)
    edges = edges[:, edges[0] != edges[1]]
    edges = torch.cat([edges, edges.flip(0)], dim=1)
    return torch.unique(edges, dim=1)


def cross_block_degree(edge_index: Tensor, block: Tensor) -> Tensor:
    """Number of neighbours of each node that lie in another block."""
    src, dst = edge_index
    crossing = (block[src] != block[dst]).float()
    return scatter(crossing, dst, dim=0, dim_size=block.numel(), reduce="sum")


def neighbour_mean(edge_index: Tensor, values: Tensor) -> Tensor:
    """``mean_{j in N(i)} values_j`` per node, ``NaN`` for a node without neighbours."""
    src, dst = edge_index
    n = values.numel()
    total = scatter(values[src], dst, dim=0, dim_size=n, reduce="sum")
    count = degree(dst, num_nodes=n)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def load_sbm(
    num_nodes: int = 2000,
    num_blocks: int = 4,
    seed: int = 0,
    avg_degree: float = 10.0,
    homophily: float = 0.8,
    num_features: int = 16,
    noise: float = 3.0,
) -> MultiTaskDataset:
    """Generate the stochastic-block-model node dataset (see module docstring); deterministic for ``seed``.

    Args:
        num_nodes: nodes in the graph (up to ``DENSE_LIMIT`` every node pair is sampled; above, edges are
            drawn per block pair in memory linear in the edges).
        num_blocks: blocks = classes of the ``block`` task.
        seed: seeds the graph, the features, the hidden projection and the split.
        avg_degree: expected node degree.
        homophily: expected fraction of edges inside a block.
        num_features: feature dimension ``F``.
        noise: standard deviation of the feature noise around the block mean (block means are ``N(0, I)``).
    """
    _check_args(num_nodes, num_blocks, avg_degree, homophily, num_features)
    sizes = block_sizes(num_nodes, num_blocks)
    p_in, p_out = edge_probabilities(sizes, avg_degree, homophily)
    probs = torch.full((num_blocks, num_blocks), p_out)
    probs.fill_diagonal_(p_in)
    if num_nodes <= DENSE_LIMIT:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            edge_index = stochastic_blockmodel_graph(sizes, probs, directed=False)
    else:
        edge_index = sparse_sbm_edges(sizes, p_in, p_out, seed)
    generator = torch.Generator().manual_seed(seed)
    block = torch.repeat_interleave(torch.arange(num_blocks), torch.tensor(sizes))
    means = torch.randn(num_blocks, num_features, generator=generator)
    x = means[block] + noise * torch.randn(num_nodes, num_features, generator=generator)
    weights = torch.randn(num_features, generator=generator) / math.sqrt(num_features)
    cross = cross_block_degree(edge_index, block)
    y_node = torch.stack(
        [block.float(), (cross > cross.median()).float(), neighbour_mean(edge_index, x @ weights)], dim=1
    )
    split = random_split(num_nodes, check_fractions(SBM_FRACTIONS), seed)
    splits = {}
    for name in SPLITS:
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[split[name]] = True
        graph = Data(x=x.clone(), edge_index=edge_index.clone(), y_node=y_node.clone(), node_mask=mask)
        splits[name] = [graph]
    info = _sbm_info(edge_index, block, y_node, splits, p_in, p_out, seed)
    return MultiTaskDataset("sbm", sbm_tasks(num_blocks), splits, node_features="float", info=info)


def _sbm_info(
    edge_index: Tensor, block: Tensor, y_node: Tensor, splits: dict, p_in: float, p_out: float, seed: int
) -> dict:
    """Sizes, realised homophily, positive rate and the train mean/std of the regression target."""
    train = splits["train"][0].node_mask
    reg = y_node[train, 2]
    reg = reg[torch.isfinite(reg)].double()
    same = (block[edge_index[0]] == block[edge_index[1]]).float()
    return {
        "source": "torch_geometric.utils.stochastic_blockmodel_graph",
        "seed": seed,
        "num_nodes": int(block.numel()),
        "num_edges": int(edge_index.size(1)),
        "p_in": p_in,
        "p_out": p_out,
        "edge_homophily": same.mean().item() if same.numel() else math.nan,
        "split_sizes": {name: int(splits[name][0].node_mask.sum()) for name in SPLITS},
        "cross_degree_positive_fraction": y_node[:, 1].mean().item(),
        "target_stats": {
            "neighbour_mean": {
                "mean": reg.mean().item(),
                "std": reg.std(unbiased=False).item(),
                "count": len(reg),
            }
        },
    }
