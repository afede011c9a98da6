"""SMILES -> PyG graph, the way the molecule datasets build their graphs, so a saved run can featurise new
molecules exactly as its training data was featurised.

Every molecule dataset (``embedded``, ``csv``, ``ogbg-mol*``) uses OGB's ``smiles2graph`` (9 integer atom
features, 3 integer bond features); they differ only in which molecules they refuse. A featuriser is therefore
described by plain values, ``{"name": "ogb_smiles2graph", "elements": [...] | None, "min_bonds": int}``, that a
checkpoint stores and :func:`featurise` replays.
"""

from __future__ import annotations

from typing import Any

import torch
from ogb.utils import smiles2graph
from rdkit import Chem, rdBase
from torch_geometric.data import Data

#: the featurisers :func:`featurise` knows, by the name stored in checkpoints
FEATURISERS: tuple[str, ...] = ("ogb_smiles2graph",)


def ogb_featuriser(elements: frozenset[str] | None = None, min_bonds: int = 0) -> dict[str, Any]:
    """The description of OGB's featurisation that refuses molecules with an element outside ``elements``
    (``None``: any) or fewer than ``min_bonds`` bonds."""
    return {"name": "ogb_smiles2graph", "elements": None if elements is None else sorted(elements),
            "min_bonds": min_bonds}


def molecule_graph(smiles: str, elements: frozenset[str] | None = None,
                   min_bonds: int = 0) -> tuple[dict | None, str]:
    """OGB graph arrays of ``smiles`` and ``""``, or ``None`` and why it cannot be used (RDKit cannot parse
    it, it has no atom, too few bonds, an element outside ``elements``, or ``smiles2graph`` fails)."""
    smiles = smiles.strip()
    if not smiles:
        return None, "empty SMILES"
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None, "RDKit cannot parse the SMILES"
        if mol.GetNumAtoms() == 0:
            return None, "no atom"
        if mol.GetNumBonds() < min_bonds:
            return None, f"fewer than {min_bonds} bond(s), which the run's dataset excluded"
        if elements is not None:
            outside = sorted({a.GetSymbol() for a in mol.GetAtoms()} - elements)
            if outside:
                return None, f"element(s) {', '.join(outside)} outside the run's training elements"
        try:
            graph = smiles2graph(smiles)
        except Exception as error:  # any smiles2graph failure refuses the molecule
            return None, f"smiles2graph failed ({type(error).__name__})"
    return (graph, "") if graph["num_nodes"] > 0 else (None, "no atom")


def featurise(spec: dict[str, Any], smiles: str) -> tuple[Data | None, str]:
    """The PyG graph of ``smiles`` under the featuriser ``spec`` (see module docstring), or ``None`` and why."""
    if spec.get("name") not in FEATURISERS:
        raise ValueError(f"featuriser: unknown featuriser {spec.get('name')!r} in the checkpoint; this graph_mtl "
                         f"knows {list(FEATURISERS)}; use the graph_mtl version that wrote the run")
    elements = spec.get("elements")
    graph, reason = molecule_graph(smiles, None if elements is None else frozenset(elements),
                                   int(spec.get("min_bonds", 0)))
    if graph is None:
        return None, reason
    return Data(x=torch.from_numpy(graph["node_feat"]).long(),
                edge_index=torch.from_numpy(graph["edge_index"]).long(),
                edge_attr=torch.from_numpy(graph["edge_feat"]).long()), ""
