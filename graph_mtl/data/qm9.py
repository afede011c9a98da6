"""QM9 (``data.name: qm9``) in the multi-task setup of the balancer papers (Nash-MTL, FAMO, ...).

Eleven graph-level regression tasks, the PyG ``QM9`` target columns ``[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]``:
``mu`` (D), ``alpha`` (a0^3), ``homo``, ``lumo`` (eV), ``r2`` (a0^2), ``zpve`` (eV), the atomisation energies
``U0``, ``U``, ``H``, ``G`` (eV) and ``Cv`` (cal/mol/K). The loss is the MSE of targets z-scored with training
statistics (``train.standardize_targets``); the metric is the MAE in those units.

Split (seeded by ``data.split_seed``): one random permutation of the ``n`` molecules; with ``v = min(10000,
max(1, round(10000 n / 130831)))`` (10,000 for the full dataset), the test set is the first ``v'`` of the
permutation, the validation set the first ``v'`` after position ``v``, the training set the molecules from
position ``2 v`` on (110,831 for the full dataset). Without ``data.limit``, ``v' = v`` and every remaining
molecule trains. ``data.limit = L`` is the *training-set size*: the first ``L`` training molecules, and
``v' = min(v, max(1, round(10000 L / 110831)))``, the full-scale ratio of evaluation to training molecules. So a
smaller run's splits are subsets of the full run's and never leak into each other.

Graphs (``data.graph``): ``complete`` (the papers': every ordered atom pair, edge features the 4 bond-type
one-hot columns, zero for non-bonded pairs, plus the interatomic distance in Angstrom, as PyG's ``Complete`` +
``Distance(norm=False)``) or ``bond`` (PyG's own graph: the bonds, 4 bond-type columns). Node features are
PyG's 11: one-hot H, C, N, O, F, atomic number, aromatic, sp, sp2, sp3, number of bonded hydrogens.

Sources (``data.source``): ``pyg`` is ``torch_geometric.datasets.QM9`` in ``data.root`` (else
``$GRAPH_MTL_DATA/QM9``, else ``~/.cache/graph_mtl/datasets/QM9``; downloads as usual);
``qm9pack`` builds the same ``Data`` from the CSV files of the ``qm9pack`` package (``pip install
graph-mtl[qm9]``; ``data.root`` may name another folder of ``qm9_part*.csv`` files), see :func:`molecule_graph`.
The molecules built from qm9pack are cached (``$GRAPH_MTL_CACHE``, as the embedded dataset) under a name that
hashes :data:`RECIPE_VERSION`, the files' names and sizes, the limit and the split seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import torch
from rdkit import Chem, rdBase
from rdkit.Chem import rdDetermineBonds
from rdkit.Chem.rdchem import BondType, HybridizationType
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets.qm9 import HAR2EV, atomrefs

from graph_mtl.config import DataConfig
from graph_mtl.data.base import SPLITS, MultiTaskDataset
from graph_mtl.data.molecules import default_cache_dir, load_payload
from graph_mtl.engine.checkpoint import atomic_save
from graph_mtl.tasks import Task

#: task name -> (PyG ``QM9.y`` column, unit), in model order
TARGETS: dict[str, tuple[int, str]] = {
    "mu": (0, "D"), "alpha": (1, "a0^3"), "homo": (2, "eV"), "lumo": (3, "eV"), "r2": (5, "a0^2"),
    "zpve": (6, "eV"), "U0": (12, "eV"), "U": (13, "eV"), "H": (14, "eV"), "G": (15, "eV"), "Cv": (11, "cal/mol/K"),
}
FULL_SIZE = 130_831
FULL_EVAL = 10_000
FULL_TRAIN = FULL_SIZE - 2 * FULL_EVAL
#: Bump when the features, targets or split of the qm9pack path change: it renames the cache file.
RECIPE_VERSION = 1
ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
BOND_TYPES: tuple[BondType, ...] = (BondType.SINGLE, BondType.DOUBLE, BondType.TRIPLE, BondType.AROMATIC)
#: qm9pack columns of PyG's 19 targets, in PyG's order; ``*`` = times HAR2EV (Hartree to eV); the atomisation
#: energies (PyG columns 12-15) are computed from U0, U, H, G and PyG's atom reference energies
_QM9PACK_TARGETS: tuple[str, ...] = (
    "Dipole_debye", "Polarizability_bohr3", "*HOMO_au", "*LUMO_au", "*HOMO_LUMO_gap_au", "R2_bohr2", "*ZPVE_au",
    "*InternalEnergy_0K_au", "*InternalEnergy_298K_au", "*Enthalphy_298K_au", "*GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
_ROTATIONAL = ("RotA_GHz", "RotB_GHz", "RotC_GHz")
_QM9PACK_COLUMNS = ("Index", "Elements", "XYZ_Ang", *(c.lstrip("*") for c in _QM9PACK_TARGETS), *_ROTATIONAL)


def qm9_tasks() -> list[Task]:
    """The eleven regression tasks, each one column of ``y`` scored by MAE in PyG's units."""
    return [Task(name, "graph", "regression", target="y", columns=(column,), metric="mae",
                 extra={"unit": unit, "pyg_column": column}) for name, (column, unit) in TARGETS.items()]


# ------------------------------------------------------------------------------------------------------ split


def split_sizes(n: int, limit: int | None) -> tuple[int, int, int]:
    """``(v, v', train)``: the full evaluation size, the evaluation size used, the training size (module doc)."""
    v = min(FULL_EVAL, max(1, round(FULL_EVAL * n / FULL_SIZE)))
    available = max(0, n - 2 * v)
    if limit is None:
        return v, v, available
    used = min(v, max(1, round(FULL_EVAL * limit / FULL_TRAIN)))
    return v, used, min(limit, available)


def qm9_split(n: int, limit: int | None, seed: int) -> dict[str, list[int]]:
    """Molecule indices of each split (module docstring), each in permutation order."""
    v, used, n_train = split_sizes(n, limit)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return {"test": perm[:used], "valid": perm[v: v + used], "train": perm[2 * v: 2 * v + n_train]}


# ------------------------------------------------------------------------------------------------------ graphs


def complete_graph(data: Data) -> Data:
    """Every ordered pair of distinct atoms as an edge; features ``[bond one-hot (zeros if unbonded), |p_i - p_j|]``."""
    n = data.num_nodes
    dense = data.edge_attr.new_zeros(n, n, data.edge_attr.size(-1))
    dense[data.edge_index[0], data.edge_index[1]] = data.edge_attr
    row, col = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = row != col
    row, col = row[keep], col[keep]
    distance = (data.pos[row] - data.pos[col]).norm(dim=-1, keepdim=True)
    out = data.clone()
    out.edge_index = torch.stack([row, col])
    out.edge_attr = torch.cat([dense[row, col], distance], dim=-1)
    return out


def _bond_graph(data: Data) -> Data:
    """PyG's own fields of a QM9 molecule (``x, z, pos, edge_index, edge_attr, y, idx``)."""
    return Data(x=data.x.float(), z=data.z, pos=data.pos, edge_index=data.edge_index,
                edge_attr=data.edge_attr.float(), y=data.y, idx=torch.tensor([int(data.idx)]))


# ---------------------------------------------------------------------------------------------- qm9pack path


def _floats(text: str) -> list[float]:
    """The numbers of a qm9pack list cell such as ``[[1.0,2.1997E-6],[3.,4]]``."""
    return [float(t) for t in text.replace("[", "").replace("]", "").split(",") if t.strip()]


def perceive_bonds(elements: list[str], pos: list[list[float]]) -> Chem.Mol:
    """A sanitised RDKit molecule with bonds (and orders) perceived from the coordinates by
    ``rdDetermineBonds.DetermineBonds`` (charge 0), retried with its Hueckel connectivity; bond-less if both fail."""
    block = f"{len(elements)}\n\n" + "\n".join(f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, pos))
    for kwargs in ({}, {"useHueckel": True}):
        mol = Chem.MolFromXYZBlock(block)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=0, **kwargs)
            return mol
        except Exception:
            continue
    return Chem.MolFromXYZBlock(block)


def atom_features(mol: Chem.Mol) -> Tensor:
    """PyG QM9's 11 node features: one-hot H/C/N/O/F, atomic number, aromatic, sp, sp2, sp3, bonded H count."""
    rows = []
    for atom in mol.GetAtoms():
        hybrid = atom.GetHybridization()
        one_hot = [float(atom.GetSymbol() == e) for e in ELEMENTS]
        hs = sum(1 for nb in atom.GetNeighbors() if nb.GetAtomicNum() == 1)
        rows.append([*one_hot, float(atom.GetAtomicNum()), float(atom.GetIsAromatic()),
                     float(hybrid == HybridizationType.SP), float(hybrid == HybridizationType.SP2),
                     float(hybrid == HybridizationType.SP3), float(hs)])
    return torch.tensor(rows, dtype=torch.float32)


def pyg_targets(row: dict[str, str], elements: list[str]) -> Tensor:
    """PyG's 19 targets ``[1, 19]`` in its order and units from a qm9pack row: Hartree values times HAR2EV,
    atomisation energy = energy - sum of PyG's atom reference energies (eV) of the molecule's atoms."""
    values = [float(row[c.lstrip("*")]) * (HAR2EV if c.startswith("*") else 1.0) for c in _QM9PACK_TARGETS]
    symbols = {"H": 0, "C": 1, "N": 2, "O": 3, "F": 4}
    atomised = [values[7 + k] - sum(atomrefs[7 + k][symbols[e]] for e in elements) for k in range(4)]
    values += atomised + [float(row[c]) for c in _ROTATIONAL]
    return torch.tensor([values], dtype=torch.float32)


def molecule_graph(row: dict[str, str]) -> tuple[Data, bool]:
    """PyG QM9's ``Data`` of one qm9pack row (bond graph) and whether bonds were perceived.

    As PyG: coordinates in Angstrom, both directions of each bond sorted by ``row * N + col``, one-hot bond type
    (single, double, triple, aromatic), ``idx`` the 0-based QM9 index (PyG counts only characterised molecules,
    so its ``idx`` differs). Bonds come from the coordinates (:func:`perceive_bonds`), not from PyG's SDF."""
    elements = re.findall(r"[A-Z][a-z]?", row["Elements"])
    coords = _floats(row["XYZ_Ang"])
    pos = [coords[3 * i: 3 * i + 3] for i in range(len(elements))]
    with rdBase.BlockLogs():
        mol = perceive_bonds(elements, pos)
    n = mol.GetNumAtoms()
    pairs, types = [], []
    for bond in mol.GetBonds():
        a, b, kind = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), BOND_TYPES.index(bond.GetBondType())
        pairs += [(a, b), (b, a)]
        types += [kind, kind]
    edge_index = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)
    edge_type = torch.tensor(types, dtype=torch.long)
    order = (edge_index[0] * n + edge_index[1]).argsort()
    edge_index, edge_type = edge_index[:, order], edge_type[order]
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=torch.long)
    data = Data(x=atom_features(mol), z=z, pos=torch.tensor(pos, dtype=torch.float32), edge_index=edge_index,
                edge_attr=torch.nn.functional.one_hot(edge_type, len(BOND_TYPES)).float(),
                y=pyg_targets(row, elements), idx=torch.tensor([int(row["Index"]) - 1]))
    return data, mol.GetNumBonds() > 0


def qm9pack_dir(root: str | None) -> Path:
    """``root``, or the data folder of the installed ``qm9pack`` package (a one-line error if neither)."""
    if root:
        path = Path(root).expanduser()
    else:
        import importlib.util

        spec = importlib.util.find_spec("qm9pack")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("data.source: 'qm9pack' needs the qm9pack package (pip install 'graph-mtl[qm9]') or "
                             "data.root naming a folder of its qm9_part*.csv files")
        path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not sorted(path.glob("qm9_part*.csv")):
        raise ValueError(f"data.root: no qm9_part*.csv file in {str(path)!r}; name the data folder of qm9pack")
    return path


def read_qm9pack(folder: Path) -> list[dict[str, str]]:
    """The rows of ``qm9_part*.csv`` (file-name order), only the columns used here."""
    rows: list[dict[str, str]] = []
    for path in sorted(folder.glob("qm9_part*.csv")):
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            missing = [c for c in _QM9PACK_COLUMNS if c not in header]
            if missing:
                raise ValueError(f"data.root: {path.name} lacks the qm9pack columns {missing}; is it qm9pack's?")
            at = [header.index(c) for c in _QM9PACK_COLUMNS]
            rows += [{c: cells[i] for c, i in zip(_QM9PACK_COLUMNS, at)} for cells in reader if cells]
    return rows


def _cache_file(folder: Path, limit: int | None, seed: int) -> tuple[Path, str]:
    files = [(p.name, p.stat().st_size) for p in sorted(folder.glob("qm9_part*.csv"))]
    key = json.dumps({"v": RECIPE_VERSION, "files": files, "limit": limit, "seed": seed, "rdkit": rdBase.rdkitVersion})
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return default_cache_dir() / f"qm9pack-v{RECIPE_VERSION}-{digest}.pt", digest


_FIELDS = ("x", "z", "pos", "edge_index", "edge_attr", "y", "idx")


def _qm9pack_splits(cfg: DataConfig) -> tuple[dict[str, list[Data]], dict]:
    """Bond graphs of every split built from qm9pack (or read from the cache) and facts for ``info``."""
    folder = qm9pack_dir(cfg.root)
    path, digest = _cache_file(folder, cfg.limit, cfg.split_seed)
    payload = load_payload(path, digest)
    if payload is None:
        rows = read_qm9pack(folder)
        split = qm9_split(len(rows), cfg.limit, cfg.split_seed)
        payload = {"recipe_hash": digest, "n": len(rows), "without_bonds": []}
        for name, indices in split.items():
            graphs = []
            for i in indices:
                graph, bonded = molecule_graph(rows[i])
                graphs.append({k: graph[k] for k in _FIELDS})
                if not bonded:
                    payload["without_bonds"].append(int(graph.idx))
            payload[name] = graphs
        atomic_save(payload, path)
    splits = {name: [Data(**fields) for fields in payload[name]] for name in SPLITS}
    info = {"source": f"qm9pack CSV files in {folder}", "cache_file": str(path), "molecules": payload["n"],
            "without_bonds": payload["without_bonds"]}
    return splits, info


def _pyg_splits(cfg: DataConfig) -> tuple[dict[str, list[Data]], dict]:
    from torch_geometric.datasets import QM9

    from graph_mtl.data.ogb_mol import default_root

    root = Path(cfg.root).expanduser() if cfg.root else default_root() / "QM9"
    try:
        dataset = QM9(str(root))
    except OSError as error:  # URLError included: no network
        raise ValueError(f"data.source: PyG's QM9 is not in {str(root)!r} and could not be downloaded ({error}); "
                         "set data.root to a copy, or use data.source: qm9pack offline") from None
    split = qm9_split(len(dataset), cfg.limit, cfg.split_seed)
    splits = {name: [_bond_graph(dataset[i]) for i in indices] for name, indices in split.items()}
    return splits, {"source": f"torch_geometric.datasets.QM9 in {root}", "molecules": len(dataset)}


def load_qm9(cfg: DataConfig) -> MultiTaskDataset:
    """QM9 as configured by ``cfg.source``, ``graph``, ``root``, ``limit`` and ``split_seed`` (module docstring)."""
    limit = cfg.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"data.limit: expected null or an int >= 1 (the training-set size), got {limit!r}")
    splits, info = _qm9pack_splits(cfg) if cfg.source == "qm9pack" else _pyg_splits(cfg)
    if cfg.graph == "complete":
        splits = {name: [complete_graph(g) for g in graphs] for name, graphs in splits.items()}
    v, used, _ = split_sizes(info["molecules"], limit)
    info.update(graph=cfg.graph, split_seed=cfg.split_seed, split_sizes={k: len(g) for k, g in splits.items()},
                eval_size_full=v, eval_size_used=used,
                units={name: unit for name, (_, unit) in TARGETS.items()})
    if info.get("without_bonds"):
        info["note"] = f"{len(info['without_bonds'])} molecule(s) without perceived bonds (kept, bond-less)"
    return MultiTaskDataset("qm9", qm9_tasks(), splits, node_features="float", info=info)
