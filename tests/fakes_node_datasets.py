"""Small generated copies of PPI and ogbn-proteins, written in the exact raw layout PyG's ``PPI`` and OGB's
``PygNodePropPredDataset`` read, so the real loader classes run offline on them.

PPI (``{root}/PPI/raw/``, what ``https://data.dgl.ai/dataset/ppi.zip`` unpacks to), per split in
``train``/``valid``/``test``:

* ``{split}_graph.json``: networkx node-link JSON of one undirected graph over all the split's nodes (ids
  ``0..n-1``, contiguous per graph), edges under ``"links"``, nodes carrying ``val``/``test`` flags;
* ``{split}_feats.npy`` ``[n, 50]`` float64, ``{split}_labels.npy`` ``[n, 121]`` 0/1 int64;
* ``{split}_graph_id.npy`` ``[n]`` int64: the graph of each node, numbered on from the previous split
  (``1..20``, ``21..22``, ``23..24`` in the real data; PyG subtracts the minimum).

ogbn-proteins (``{root}/ogbn_proteins/``, what ``proteins.zip`` unpacks to): ``RELEASE_v1.txt`` (the version
marker; without it ogb asks on stdin whether to re-download), ``raw/`` with headerless gzipped CSVs
``edge.csv.gz`` (each undirected pair once; ogb adds the inverse), ``edge-feat.csv.gz`` ``[E, 8]`` floats,
``node-label.csv.gz`` ``[N, 112]`` 0/1, ``node_species.csv.gz`` ``[N, 1]`` taxonomy ids,
``num-node-list.csv.gz`` / ``num-edge-list.csv.gz`` (one row: N, E), and ``split/species/{train,valid,test}
.csv.gz`` (node indices, one per row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PPI_FEATURES = 50
PPI_LABELS = 121
PROTEIN_EDGE_FEATURES = 8
PROTEIN_TASKS = 112


@dataclass
class FakePPI:
    """What :func:`write_fake_ppi` wrote: per split, the graphs' node features, labels and undirected edges."""

    root: Path
    feats: dict[str, list[np.ndarray]]
    labels: dict[str, list[np.ndarray]]
    edges: dict[str, list[set[tuple[int, int]]]]  # local node ids, (low, high), self-loops left out


def _ring_plus_random(n: int, extra: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """Undirected edges ``(i, j)``, ``i < j``: a ring (so every node, node 0 included, has an edge) and chords."""
    edges = {(min(i, (i + 1) % n), max(i, (i + 1) % n)) for i in range(n)}
    while len(edges) < n + extra:
        i, j = rng.integers(0, n, size=2)
        if i != j:
            edges.add((int(min(i, j)), int(max(i, j))))
    return edges


def write_fake_ppi(root: Path, graphs: dict[str, int] | None = None, seed: int = 0) -> FakePPI:
    """Write ``{root}/PPI/raw`` with ``graphs`` graphs per split (default 4/2/2) of 20-40 nodes each."""
    graphs = graphs or {"train": 4, "valid": 2, "test": 2}
    rng = np.random.default_rng(seed)
    raw = Path(root) / "PPI" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    fake = FakePPI(Path(root), {}, {}, {})
    next_id = 1
    for split, count in graphs.items():
        nodes, links, feats, labels, graph_ids, local_edges = [], [], [], [], [], []
        offset = 0
        for _ in range(count):
            n = int(rng.integers(20, 41))
            edges = _ring_plus_random(n, extra=n, rng=rng)
            local_edges.append(edges)
            nodes += [{"id": offset + i, "val": split == "valid", "test": split == "test"} for i in range(n)]
            links += [{"source": offset + i, "target": offset + j} for i, j in sorted(edges)]
            links.append({"source": offset + 3, "target": offset + 3})  # a self-loop: PyG removes it
            feats.append(rng.normal(size=(n, PPI_FEATURES)))
            labels.append((rng.random((n, PPI_LABELS)) < 0.3).astype(np.int64))
            graph_ids.append(np.full(n, next_id, dtype=np.int64))
            next_id += 1
            offset += n
        graph = {"directed": False, "multigraph": False, "graph": {}, "nodes": nodes, "links": links}
        (raw / f"{split}_graph.json").write_text(json.dumps(graph))
        np.save(raw / f"{split}_feats.npy", np.concatenate(feats))
        np.save(raw / f"{split}_labels.npy", np.concatenate(labels))
        np.save(raw / f"{split}_graph_id.npy", np.concatenate(graph_ids))
        fake.feats[split], fake.labels[split], fake.edges[split] = feats, labels, local_edges
    return fake


@dataclass
class FakeProteins:
    """What :func:`write_fake_proteins` wrote."""

    root: Path
    edges: np.ndarray  # [E, 2] undirected pairs, each once
    edge_feat: np.ndarray  # [E, 8]
    labels: np.ndarray  # [N, 112]
    species: np.ndarray  # [N]
    split: dict[str, np.ndarray]  # node indices


def write_fake_proteins(root: Path, num_nodes: int = 300, num_edges: int = 1000, seed: int = 0,
                        release: bool = True) -> FakeProteins:
    """Write ``{root}/ogbn_proteins`` with ``num_nodes`` proteins of 3 species (one per split) and ``num_edges``
    undirected edges (``2 * num_edges`` directed once ogb adds the inverses); ``release=False`` leaves out
    ``RELEASE_v1.txt``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "ogbn_proteins"
    raw, split_dir = folder / "raw", folder / "split" / "species"
    raw.mkdir(parents=True, exist_ok=True)
    split_dir.mkdir(parents=True, exist_ok=True)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < num_edges:
        i, j = rng.integers(0, num_nodes, size=2)
        if i != j:
            pairs.add((int(min(i, j)), int(max(i, j))))
    edges = np.array(sorted(pairs), dtype=np.int64)
    edge_feat = np.round(rng.uniform(0.001, 1.0, size=(num_edges, PROTEIN_EDGE_FEATURES)), 3)
    labels = (rng.random((num_nodes, PROTEIN_TASKS)) < 0.2).astype(np.int64)
    taxa = np.array([3702, 4932, 9606])  # real ogbn-proteins species are NCBI taxonomy ids like these
    species = taxa[rng.choice(3, size=num_nodes, p=[0.6, 0.2, 0.2])]
    split = {name: np.flatnonzero(species == taxon) for name, taxon in zip(("train", "valid", "test"), taxa)}

    def save(path: Path, array: np.ndarray, fmt: str = "%d") -> None:
        np.savetxt(path, array, fmt=fmt, delimiter=",")  # a .gz name is gzipped by numpy

    save(raw / "edge.csv.gz", edges)
    save(raw / "edge-feat.csv.gz", edge_feat, fmt="%.3f")
    save(raw / "node-label.csv.gz", labels)
    save(raw / "node_species.csv.gz", species.reshape(-1, 1))
    save(raw / "num-node-list.csv.gz", np.array([num_nodes]))
    save(raw / "num-edge-list.csv.gz", np.array([num_edges]))
    for name, idx in split.items():
        save(split_dir / f"{name}.csv.gz", idx)
    if release:
        (folder / "RELEASE_v1.txt").write_text("ogbn-proteins v1 (generated for tests)\n")
    return FakeProteins(Path(root), edges, edge_feat, labels, species, split)
