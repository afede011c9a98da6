"""The embedded default dataset: ~5,000 NCI molecules shipped with RDKit, labelled by RDKit itself.

Nothing is downloaded: the SMILES come from ``RDConfig.RDDataDir/NCI/first_5K.smi`` (one ``SMILES<TAB>id`` per
line) and every label is computed deterministically with RDKit, so the dataset is real chemistry, needs no
network, and covers both levels and every kind of task needed to exercise a multi-task model:

=================  =====  ==========  ===================================================================
task               level  kind        definition
=================  =====  ==========  ===================================================================
``logp``           graph  regression  Wildman-Crippen logP, ``sum_i c_i`` over all atoms incl. hydrogens
``tpsa``           graph  regression  topological polar surface area (Ertl 2000), in A^2
``qed``            graph  regression  quantitative estimate of drug-likeness (Bickerton 2012), in [0, 1]
``lipinski``       graph  binary      1 if at most one rule-of-five violation: MW > 500, logP > 5,
                                      NH+OH donors > 5, N+O acceptors > 10
``brenk``          graph  binary      1 if any Brenk unwanted-substructure alert matches (Brenk 2008)
``gasteiger``      node   regression  Gasteiger-Marsili charge of the atom plus its implicit hydrogens
                                      (united-atom charge; the sum over a molecule is its formal charge)
``crippen_logp``   node   regression  Crippen logP contribution of the atom plus its hydrogens; the sum
                                      over a molecule is ``logp``
``tpsa_atom``      node   regression  Ertl's polar surface contribution of the atom (N and O with their
                                      hydrogens, 0 elsewhere); the sum over a molecule is ``tpsa``
``pharmacophore``  node   multiclass  RDKit BaseFeatures.fdef role: 0 none, 1 H-bond donor only,
                                      2 H-bond acceptor only, 3 donor and acceptor
``brenk_atom``     node   binary      1 if the atom is part of a Brenk alert match
=================  =====  ==========  ===================================================================

``logp`` and ``tpsa`` are sums of the atom contributions that ``crippen_logp`` and ``tpsa_atom`` label, and
declare it (``task.extra["sum_of"]``): with ``model.pool: auto`` (the default) each is read out as an affine map
of its node task's predictions summed over the molecule (``NodeSumHead``), and the virtual node then reads the
mean of the atoms (``model.vn_pool: auto``), so that no atom's value depends on the molecule's size; ``qed`` and
``lipinski``, which depend on counts over the molecule (mass, donors, acceptors), declare ``add_norm`` pooling
(the sum of the atoms' embeddings, batch-normalised), which gives them back the size. The scaffold
test split holds molecules larger than any in training (tannic acid: 122 atoms, TPSA 778; the training maximum is
66 atoms), so this is what decides the test RMSE. Test figures of the default demo run (seed 0, 30 epochs, one
thread, all ten tasks trained), each variant run once:

=============================================================  ======  =====  =====  ========  =========
variant                                                        tpsa    logp   qed    lipinski  gasteiger
=============================================================  ======  =====  =====  ========  =========
mean pooling, summing virtual node (as before the sums)        31.5    0.91   0.094  0.996     0.025
``contrib`` pooling for tpsa and logp, summing virtual node    12.3    2.76   0.102  0.997     0.042
node sums, summing virtual node                                15.7    4.66   0.095  0.997     0.100
node sums, mean-reading virtual node                           4.86    0.34   0.143  0.856     0.019
the same, ``add`` pooling for qed and lipinski                 3.35    0.48   0.163  0.760     0.022
the same, ``add_norm`` for qed and lipinski (**the default**)  3.20    0.30   0.135  0.965     0.019
=============================================================  ======  =====  =====  ========  =========

(lipinski is a ROC-AUC, the others RMSEs.) With a summing virtual node the size reaches every atom's embedding,
and on the largest test molecules the atoms' values drift (tannic acid's summed TPSA 470 instead of 778); the
mean-reading one keeps them (the node tasks improve too) but takes from qed and lipinski the counts they depend
on: their training losses tripled. Appending ``log(1 + atoms)`` to their heads did not give them back (qed
0.152, lipinski 0.866); a plain sum did worse (its scale grows with the molecule and the head trained poorly);
the batch-normalised sum did (training losses back to the summing virtual node's). qed stays behind the
summing virtual node on test (0.135 against 0.094; valid 0.088 against 0.077). ``model.pool: mean`` restores the
summing virtual node and mean-pooled heads. Before the sum read-outs, without ``tpsa_atom``: ``contrib``
pooling without a virtual node gave tpsa 13.3, and the default 14.7-26.6 across runs.

A label RDKit cannot compute (an exception or a non-finite value, e.g. Gasteiger charges on metal complexes)
is ``NaN`` = missing; the molecule is kept. Regression targets are stored raw; ``info["target_stats"]`` has
their train-split mean and std. Graphs use OGB's ``smiles2graph`` featurisation (9 atom, 3 bond integer
features). The split is a Bemis-Murcko scaffold split, 80/10/10.

The built dataset is cached as plain tensors (loadable with ``torch.load(weights_only=True)``) under a file
name that hashes the recipe: :data:`RECIPE_VERSION`, the RDKit and OGB versions, the SHA-256 of the SMILES
file and ``limit``. Bump :data:`RECIPE_VERSION` whenever a label or the featurisation changes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ogb
import torch
from ogb.utils import smiles2graph
from rdkit import Chem, RDConfig, rdBase
from rdkit.Chem import QED, ChemicalFeatures, Crippen, Descriptors, rdMolDescriptors, rdPartialCharges
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
from torch import Tensor
from torch_geometric.data import Data

from graph_mtl.data.base import SPLITS, MultiTaskDataset
from graph_mtl.data.splits import scaffold_split
from graph_mtl.engine.checkpoint import atomic_save
from graph_mtl.tasks import Task

#: Bump when a label, the featurisation, the parsing or the split changes: it renames the cache file.
RECIPE_VERSION = 4
#: elements of the organic subset; molecules with any other atom (metal complexes, As, Sb...) are skipped: each
#: such element has < 40 molecules, so its atom features are barely trained, and one ferrocene in the
#: validation split got a logp prediction of 50.8 (label 1.9) that alone tripled the split's RMSE
ORGANIC_ELEMENTS = frozenset({"H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Se", "Br", "I"})
#: Layout of the cached payload (keys and tensor shapes).
PAYLOAD_FORMAT = 1
SMILES_FILE = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
CACHE_ENV = "GRAPH_MTL_CACHE"

GRAPH_COLUMNS: tuple[str, ...] = ("logp", "tpsa", "qed", "lipinski", "brenk")  # append-only too
#: label columns of the cached tensors; append-only: a saved run's tasks name their columns by index, so a column
#: added in the middle would hand an old run's task another task's labels when it is evaluated
NODE_COLUMNS: tuple[str, ...] = ("gasteiger", "crippen_logp", "pharmacophore", "brenk_atom", "tpsa_atom")
PHARMACOPHORE_CLASSES: tuple[str, ...] = ("none", "donor", "acceptor", "donor_acceptor")

LABEL_SOURCES: dict[str, str] = {
    "logp": "rdkit.Chem.Crippen.MolLogP (Wildman & Crippen 1999)",
    "tpsa": "rdkit.Chem.rdMolDescriptors.CalcTPSA (Ertl 2000)",
    "qed": "rdkit.Chem.QED.qed (Bickerton 2012)",
    "lipinski": "<= 1 violation of MolWt > 500, MolLogP > 5, CalcNumLipinskiHBD > 5, CalcNumLipinskiHBA > 10",
    "brenk": "rdkit FilterCatalog BRENK: any match",
    "gasteiger": "rdPartialCharges.ComputeGasteigerCharges: _GasteigerCharge + _GasteigerHCharge per atom",
    "crippen_logp": "rdMolDescriptors._CalcCrippenContribs on AddHs(mol), H values added to their atom",
    "tpsa_atom": "rdMolDescriptors._CalcTPSAContribs (Ertl 2000 fragment contribution of each N and O)",
    "pharmacophore": "RDKit BaseFeatures.fdef Donor/Acceptor families: class = donor + 2 * acceptor",
    "brenk_atom": "rdkit FilterCatalog BRENK: atom in any match",
}


def embedded_tasks() -> list[Task]:
    """The ten tasks of the embedded dataset, in model order (graph tasks first); ``logp`` and ``tpsa`` declare
    the node task they are the sum of (``extra["sum_of"]``, read by ``model.pool: auto``)."""

    def make(name: str, level: str, kind: str, num_outputs: int = 1, **extra) -> Task:
        target, columns = ("y_graph", GRAPH_COLUMNS) if level == "graph" else ("y_node", NODE_COLUMNS)
        extra = {"source": LABEL_SOURCES[name], **extra}
        return Task(
            name, level, kind, num_outputs, target=target, columns=(columns.index(name),), extra=extra
        )

    return [
        make("logp", "graph", "regression", sum_of="crippen_logp"),
        make("tpsa", "graph", "regression", sum_of="tpsa_atom"),
        make("qed", "graph", "regression", pool="add_norm"),
        make("lipinski", "graph", "binary", pool="add_norm"),
        make("brenk", "graph", "binary"),
        make("gasteiger", "node", "regression"),
        make("crippen_logp", "node", "regression"),
        make("tpsa_atom", "node", "regression"),
        make(
            "pharmacophore", "node", "multiclass", len(PHARMACOPHORE_CLASSES), classes=PHARMACOPHORE_CLASSES
        ),
        make("brenk_atom", "node", "binary"),
    ]


# --------------------------------------------------------------------------------------------- recipe & cache


def default_cache_dir() -> Path:
    """``$GRAPH_MTL_CACHE`` if set, else ``~/.cache/graph_mtl``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graph_mtl"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recipe(limit: int | None) -> dict:
    """Everything the cached dataset depends on; its hash names the cache file."""
    return {
        "recipe_version": RECIPE_VERSION,
        "payload_format": PAYLOAD_FORMAT,
        "rdkit": rdBase.rdkitVersion,
        "ogb": ogb.__version__,
        "smiles_sha256": file_sha256(SMILES_FILE),
        "limit": limit,
    }


def recipe_hash(limit: int | None) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of :func:`recipe`."""
    text = json.dumps(recipe(limit), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path | None = None, limit: int | None = None) -> Path:
    """Where the dataset for this recipe is (or will be) cached."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / f"embedded-v{RECIPE_VERSION}-{recipe_hash(limit)}.pt"


def load_payload(path: Path, expected_hash: str) -> dict | None:
    """The cached payload, or ``None`` if the file is missing, unreadable or of another recipe."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception:
        return None
    if not isinstance(payload, dict) or payload.get("recipe_hash") != expected_hash:
        return None
    return payload


# ----------------------------------------------------------------------------------------------------- labels


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _safe(fn: Callable[[], float]) -> float:
    """``fn()`` as a float, ``NaN`` if it raises or is not finite."""
    try:
        return _finite(fn())
    except Exception:
        return math.nan


@functools.lru_cache(maxsize=1)
def _brenk_catalog() -> FilterCatalog:
    params = FilterCatalogParams()
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.BRENK)
    return FilterCatalog(params)


@functools.lru_cache(maxsize=1)
def _feature_factory() -> ChemicalFeatures.MolChemicalFeatureFactory:
    return ChemicalFeatures.BuildFeatureFactory(os.path.join(RDConfig.RDDataDir, "BaseFeatures.fdef"))


def brenk_atoms(mol: Chem.Mol) -> tuple[bool, set[int]]:
    """Whether any Brenk alert matches, and the atoms covered by the matches."""
    entries = _brenk_catalog().GetMatches(mol)
    atoms: set[int] = set()
    for entry in entries:
        for match in entry.GetFilterMatches(mol):
            atoms.update(atom for _, atom in match.atomPairs)
    return len(entries) > 0, atoms


def lipinski_pass(mol: Chem.Mol) -> float:
    """1.0 if at most one of MW > 500, logP > 5, HBD > 5, HBA > 10 holds (Lipinski's rule of five)."""
    violations = (
        Descriptors.MolWt(mol) > 500,
        Crippen.MolLogP(mol) > 5,
        rdMolDescriptors.CalcNumLipinskiHBD(mol) > 5,
        rdMolDescriptors.CalcNumLipinskiHBA(mol) > 10,
    )
    return float(sum(violations) <= 1)


def graph_labels(mol: Chem.Mol) -> list[float]:
    """Graph-level labels in :data:`GRAPH_COLUMNS` order."""
    return [
        _safe(lambda: Crippen.MolLogP(mol)),
        _safe(lambda: rdMolDescriptors.CalcTPSA(mol)),
        _safe(lambda: QED.qed(mol)),
        _safe(lambda: lipinski_pass(mol)),
        _safe(lambda: brenk_atoms(mol)[0]),
    ]


def gasteiger_charges(mol: Chem.Mol) -> np.ndarray:
    """United-atom Gasteiger charge ``q_i + q_H(i)`` per atom (``q_H`` = charge of its implicit hydrogens).

    ``NaN`` where RDKit has no parameters or the value is not finite (e.g. every atom of a metal complex).
    """
    work = Chem.Mol(mol)
    try:
        rdPartialCharges.ComputeGasteigerCharges(work)
        values = [
            a.GetDoubleProp("_GasteigerCharge") + a.GetDoubleProp("_GasteigerHCharge")
            for a in work.GetAtoms()
        ]
    except Exception:
        return np.full(mol.GetNumAtoms(), np.nan)
    return np.array([_finite(v) for v in values])


def crippen_contributions(mol: Chem.Mol) -> np.ndarray:
    """Crippen logP contribution per atom, each added hydrogen's contribution folded into its heavy atom."""
    n = mol.GetNumAtoms()
    try:
        with_h = Chem.AddHs(mol)
        contribs = rdMolDescriptors._CalcCrippenContribs(with_h)
    except Exception:
        return np.full(n, np.nan)
    values = np.array([c[0] for c in contribs[:n]], dtype=np.float64)
    for atom in with_h.GetAtoms():
        if atom.GetIdx() >= n:  # a hydrogen added by AddHs: one neighbour, its heavy atom
            values[atom.GetNeighbors()[0].GetIdx()] += contribs[atom.GetIdx()][0]
    return np.where(np.isfinite(values), values, np.nan)


def tpsa_contributions(mol: Chem.Mol) -> np.ndarray:
    """Ertl's polar surface contribution per atom (N and O with their hydrogens; 0 elsewhere); sums to ``tpsa``."""
    try:
        return np.array(rdMolDescriptors._CalcTPSAContribs(mol), dtype=np.float64)
    except Exception:
        return np.full(mol.GetNumAtoms(), np.nan)


def pharmacophore_classes(mol: Chem.Mol) -> np.ndarray:
    """``donor + 2 * acceptor`` per atom from RDKit's BaseFeatures.fdef Donor and Acceptor families."""
    factory = _feature_factory()
    try:
        roles = np.zeros(mol.GetNumAtoms())
        for family, weight in (("Donor", 1), ("Acceptor", 2)):
            atoms = {a for f in factory.GetFeaturesForMol(mol, includeOnly=family) for a in f.GetAtomIds()}
            roles[sorted(atoms)] += weight
    except Exception:
        return np.full(mol.GetNumAtoms(), np.nan)
    return roles


def node_labels(mol: Chem.Mol) -> np.ndarray:
    """Node-level labels ``[num_atoms, len(NODE_COLUMNS)]`` in :data:`NODE_COLUMNS` order."""
    n = mol.GetNumAtoms()
    try:
        _, alert_atoms = brenk_atoms(mol)
        in_alert = np.array([float(i in alert_atoms) for i in range(n)])
    except Exception:
        in_alert = np.full(n, np.nan)
    columns = (
        gasteiger_charges(mol), crippen_contributions(mol), pharmacophore_classes(mol), in_alert,
        tpsa_contributions(mol),
    )
    return np.stack(columns, axis=1)


# -------------------------------------------------------------------------------------------------- building


def read_smiles_file(path: Path = SMILES_FILE) -> list[tuple[int, str, str]]:
    """``(line number, SMILES, id)`` for each non-empty line of a ``SMILES[whitespace id]`` file."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if fields:
            rows.append((number, fields[0], fields[1] if len(fields) > 1 else ""))
    return rows


def parse_molecule(smiles: str) -> tuple[Chem.Mol | None, str]:
    """The RDKit molecule and ``""``, or ``None`` and why it is skipped."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, "unparseable"
    if mol.GetNumAtoms() == 0 or mol.GetNumBonds() == 0:
        return None, "no_atoms_or_bonds"
    if any(atom.GetSymbol() not in ORGANIC_ELEMENTS for atom in mol.GetAtoms()):
        return None, "outside_organic_subset"
    return mol, ""


def featurise(smiles: str, mol: Chem.Mol) -> dict[str, np.ndarray]:
    """OGB graph arrays of ``smiles`` plus the labels of ``mol`` (the same parse, so atom order agrees)."""
    graph = smiles2graph(smiles)
    if graph["num_nodes"] != mol.GetNumAtoms():
        raise ValueError(f"smiles2graph gave {graph['num_nodes']} atoms, RDKit {mol.GetNumAtoms()}")
    return {
        "x": graph["node_feat"],
        "edge_index": graph["edge_index"],
        "edge_attr": graph["edge_feat"],
        "y_graph": np.array(graph_labels(mol), dtype=np.float64),
        "y_node": node_labels(mol),
    }


def _collate(records: list[dict[str, np.ndarray]]) -> dict[str, Tensor]:
    """Flat tensors of all molecules with ``node_ptr``/``edge_ptr`` offsets (edge indices stay local)."""
    nodes = [len(r["x"]) for r in records]
    edges = [r["edge_index"].shape[1] for r in records]
    return {
        "x": torch.from_numpy(np.concatenate([r["x"] for r in records])).long(),
        "edge_index": torch.from_numpy(np.concatenate([r["edge_index"] for r in records], axis=1)).long(),
        "edge_attr": torch.from_numpy(np.concatenate([r["edge_attr"] for r in records])).long(),
        "y_graph": torch.from_numpy(np.stack([r["y_graph"] for r in records])).float(),
        "y_node": torch.from_numpy(np.concatenate([r["y_node"] for r in records])).float(),
        "node_ptr": torch.tensor([0, *np.cumsum(nodes).tolist()], dtype=torch.long),
        "edge_ptr": torch.tensor([0, *np.cumsum(edges).tolist()], dtype=torch.long),
    }


def _column_stats(values: Tensor) -> dict:
    """Mean, population std and count of the finite entries of a 1-D tensor."""
    values = values[torch.isfinite(values)].double()
    if values.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "count": 0}
    return {"mean": values.mean().item(), "std": values.std(unbiased=False).item(), "count": values.numel()}


def _task_values(tensors: dict[str, Tensor], task: Task, molecules: list[int] | None = None) -> Tensor:
    """One task's column over the given molecules (all if ``None``), node tasks flattened over atoms."""
    column = task.columns[0]
    if task.level == "graph":
        values = tensors["y_graph"][:, column]
        return values if molecules is None else values[molecules]
    values = tensors["y_node"][:, column]
    if molecules is None:
        return values
    ptr = tensors["node_ptr"].tolist()
    return torch.cat([values[ptr[i] : ptr[i + 1]] for i in molecules]) if molecules else values[:0]


def target_stats(tensors: dict[str, Tensor], train: list[int]) -> dict[str, dict]:
    """Train-split mean/std/count of every regression task (for standardising targets in the trainer)."""
    tasks = [t for t in embedded_tasks() if t.kind == "regression"]
    return {t.name: _column_stats(_task_values(tensors, t, train)) for t in tasks}


def label_stats(tensors: dict[str, Tensor]) -> dict[str, dict]:
    """Whole-dataset summary per task: positive fraction, class fractions, or mean/std/min/max."""
    out: dict[str, dict] = {}
    for task in embedded_tasks():
        values = _task_values(tensors, task)
        total = values.numel()
        values = values[torch.isfinite(values)]
        entry: dict = {"labelled": values.numel(), "missing": total - values.numel()}
        if task.kind == "binary":
            entry["positive_fraction"] = values.mean().item() if values.numel() else math.nan
        elif task.kind == "multiclass":
            counts = torch.bincount(values.long(), minlength=task.num_outputs).tolist()
            entry["class_fractions"] = [c / max(1, values.numel()) for c in counts]
        else:
            entry.update(_column_stats(values))
            entry.update(min=values.min().item(), max=values.max().item())
        out[task.name] = entry
    return out


def build_payload(limit: int | None = None) -> dict:
    """Read, parse, featurise and label the molecules, then split them; a dict of tensors and plain values."""
    start = time.perf_counter()
    records, smiles, skipped = [], [], []
    read = 0
    with rdBase.BlockLogs():
        for line, smi, mol_id in read_smiles_file(SMILES_FILE):
            if limit is not None and len(records) >= limit:
                break
            read += 1
            mol, reason = parse_molecule(smi)
            if mol is not None:
                try:
                    records.append(featurise(smi, mol))
                    smiles.append(smi)
                    continue
                except Exception as error:  # any featurisation failure skips the molecule
                    reason = f"featurise: {error}"
            skipped.append({"line": line, "id": mol_id, "smiles": smi, "reason": reason})
    if not records:
        raise ValueError(f"embedded dataset: no usable molecule in {SMILES_FILE}")
    tensors = _collate(records)
    split = scaffold_split(smiles, SPLIT_FRACTIONS)
    info = {
        "source": f"RDConfig.RDDataDir/NCI/first_5K.smi ({SMILES_FILE.name}, RDKit {rdBase.rdkitVersion})",
        "counts": {"read": read, "kept": len(records), "skipped": len(skipped)},
        "skipped": skipped,
        "num_nodes": int(tensors["x"].size(0)),
        "num_edges": int(tensors["edge_index"].size(1)),
        "split": "scaffold (Bemis-Murcko, chirality kept), greedy largest-first",
        "split_fractions": list(SPLIT_FRACTIONS),
        "split_sizes": {name: len(idx) for name, idx in split.items()},
        "label_sources": dict(LABEL_SOURCES),
        "target_stats": target_stats(tensors, split["train"]),
        "label_stats": label_stats(tensors),
        "recipe": recipe(limit),
        "recipe_hash": recipe_hash(limit),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    return {"recipe_hash": info["recipe_hash"], **tensors, "smiles": smiles, "split": split, "info": info}


def _graphs(payload: dict) -> list[Data]:
    """One PyG ``Data`` per molecule from the flat payload tensors."""
    node_ptr, edge_ptr = payload["node_ptr"].tolist(), payload["edge_ptr"].tolist()
    graphs = []
    for i, smi in enumerate(payload["smiles"]):
        n0, n1, e0, e1 = node_ptr[i], node_ptr[i + 1], edge_ptr[i], edge_ptr[i + 1]
        graphs.append(
            Data(
                x=payload["x"][n0:n1].clone(),
                edge_index=payload["edge_index"][:, e0:e1].clone(),
                edge_attr=payload["edge_attr"][e0:e1].clone(),
                y_graph=payload["y_graph"][i : i + 1].clone(),
                y_node=payload["y_node"][n0:n1].clone(),
                smiles=smi,
            )
        )
    return graphs


def load_embedded(cache_dir: str | Path | None = None, limit: int | None = None) -> MultiTaskDataset:
    """The embedded NCI molecule dataset (see module docstring), built once and then read from the cache.

    Args:
        cache_dir: cache folder; default ``$GRAPH_MTL_CACHE`` or ``~/.cache/graph_mtl``.
        limit: keep only the first ``limit`` parseable molecules (for fast tests); ``None`` keeps all.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected None or an int >= 1, got {limit!r}")
    path = cache_path(cache_dir, limit)
    payload = load_payload(path, recipe_hash(limit))
    from_cache = payload is not None
    if payload is None:
        payload = build_payload(limit)
        atomic_save(payload, path)
    graphs = _graphs(payload)
    splits = {name: [graphs[i] for i in payload["split"][name]] for name in SPLITS}
    info = {**payload["info"], "cache_file": str(path), "from_cache": from_cache}
    return MultiTaskDataset("embedded", embedded_tasks(), splits, node_features="ogb", info=info)
