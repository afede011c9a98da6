"""Molecule-level features from SMILES (``data.graph_features``), appended to the pooled graph representation
before every graph head.

* ``rdkit2d``: every descriptor of ``rdkit.Chem.Descriptors._descList`` (RDKit's 2D descriptors). A descriptor
  that raises or is not finite is ``NaN``. Each column ``j`` is then normalised with statistics of the
  training split only: clipped to its training quantiles ``[q_0.5%, q_99.5%]``, standardised with the mean
  ``mu_j`` and standard deviation ``s_j`` of the clipped training values, and ``NaN`` set to 0 (the mean):

  .. math:: u_j = \\big(\\mathrm{clip}(x_j, q^{lo}_j, q^{hi}_j) - \\mu_j\\big) / s_j \\quad (s_j = 1 \\text{ where } 0)

* ``morgan``: the Morgan count fingerprint (radius 2, 2048 bits, counts of colliding environments summed) as
  ``log(1 + count)``; it needs no statistics.
* ``rdkit2d+morgan``: both, in that order.

Each graph gets ``graph_x`` of shape ``[1, F]``, so a batch collates to ``[B, F]``. The raw (un-normalised)
features of a dataset's molecules are cached in ``<cache>/graph-features-<kind>-v<version>-<hash>.pt``, the hash
covering :data:`FEATURES_VERSION`, the RDKit version and the SMILES, so the second load reads them. The
transform (:func:`fit_transform`'s ``spec``: the kind, version and the ``rdkit2d`` statistics, as tensors) is
stored in the run's checkpoint, and ``predict`` applies it to new SMILES (:func:`features_for_smiles`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from tqdm.auto import tqdm

from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.engine.checkpoint import atomic_save

#: the values of ``data.graph_features``
KINDS: tuple[str, ...] = ("none", "rdkit2d", "morgan", "rdkit2d+morgan")
#: bump when a feature's definition changes: it renames the cache files
FEATURES_VERSION = 1
MORGAN_RADIUS = 2
MORGAN_BITS = 2048
#: the training quantiles every ``rdkit2d`` column is clipped to
CLIP_QUANTILES = (0.005, 0.995)
#: molecules from which the computation shows a progress bar (on a terminal)
PROGRESS_MIN = 1_000


def parts(kind: str) -> list[str]:
    """The feature blocks of a kind: ``"rdkit2d+morgan"`` -> ``["rdkit2d", "morgan"]``, ``"none"`` -> ``[]``."""
    if kind not in KINDS:
        raise ValueError(f"data.graph_features: unknown value {kind!r}; choose one of {list(KINDS)}")
    return [] if kind == "none" else kind.split("+")


def rdkit2d_row(mol: Chem.Mol | None) -> np.ndarray:
    """RDKit's 2D descriptors of ``mol`` (``NaN`` where one raises or is not finite, all ``NaN`` for ``None``)."""
    row = np.full(len(Descriptors._descList), np.nan)
    if mol is None:
        return row
    for j, (_, fn) in enumerate(Descriptors._descList):
        try:
            row[j] = float(fn(mol))
        except Exception:  # any descriptor failure is a missing value
            continue
    row[~np.isfinite(row)] = np.nan
    return row


def morgan_row(mol: Chem.Mol | None) -> np.ndarray:
    """``log(1 + counts)`` of the Morgan count fingerprint (:data:`MORGAN_RADIUS`, :data:`MORGAN_BITS`)."""
    if mol is None:
        return np.zeros(MORGAN_BITS)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    return np.log1p(generator.GetCountFingerprintAsNumPy(mol).astype(np.float64))


ROWS = {"rdkit2d": rdkit2d_row, "morgan": morgan_row}


def raw_features(kind: str, smiles: Sequence[str], progress: bool = False) -> np.ndarray:
    """The un-normalised features ``[N, F]`` (float64) of ``smiles`` (module docstring)."""
    blocks = parts(kind)
    rows = []
    items = tqdm(smiles, desc=f"graph features {kind}", unit="mol", file=sys.stderr, leave=False,
                 disable=not progress or len(smiles) < PROGRESS_MIN or not sys.stderr.isatty())
    with rdBase.BlockLogs():
        for smi in items:
            mol = Chem.MolFromSmiles(smi)
            rows.append(np.concatenate([ROWS[b](mol) for b in blocks]))
    width = sum(len(Descriptors._descList) if b == "rdkit2d" else MORGAN_BITS for b in blocks)
    return np.stack(rows) if rows else np.zeros((0, width))


def fit_transform(kind: str, train: np.ndarray) -> dict[str, Any]:
    """The transform's ``spec`` fitted on the training rows ``train`` ``[N, F]`` (module docstring); only the
    ``rdkit2d`` columns (the first ones) have statistics."""
    spec: dict[str, Any] = {"kind": kind, "version": FEATURES_VERSION}
    if "rdkit2d" in parts(kind):
        x = train[:, :len(Descriptors._descList)]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no statistics, set below
            lo, hi = (np.nanquantile(x, q, axis=0) for q in CLIP_QUANTILES)
            clipped = np.clip(x, lo, hi)
            mean, std = np.nanmean(clipped, axis=0), np.nanstd(clipped, axis=0)
        empty = ~np.isfinite(mean)
        lo[empty], hi[empty], mean[empty] = 0.0, 0.0, 0.0
        std[~(np.isfinite(std) & (std > 0))] = 1.0
        spec["rdkit2d"] = {name: torch.from_numpy(v.astype(np.float64))
                           for name, v in (("lo", lo), ("hi", hi), ("mean", mean), ("std", std))}
    return spec


def transform(spec: dict[str, Any], raw: np.ndarray) -> torch.Tensor:
    """Normalised features ``[N, F]`` (float32, finite) of raw rows with a fitted ``spec``."""
    x = np.array(raw, dtype=np.float64)
    stats = spec.get("rdkit2d")
    if stats is not None:
        width = len(stats["mean"])
        lo, hi, mean, std = (stats[k].numpy() for k in ("lo", "hi", "mean", "std"))
        x[:, :width] = (np.clip(x[:, :width], lo, hi) - mean) / std
    x[~np.isfinite(x)] = 0.0
    return torch.from_numpy(x.astype(np.float32))


def features_for_smiles(spec: dict[str, Any], smiles: Sequence[str]) -> torch.Tensor:
    """The features ``[N, F]`` of new SMILES under a run's stored ``spec`` (what ``predict`` appends)."""
    if spec.get("version") != FEATURES_VERSION:
        raise ValueError(f"data.graph_features: the run's features are version {spec.get('version')}, this "
                         f"graph_mtl computes version {FEATURES_VERSION}; use the graph_mtl that wrote the run")
    return transform(spec, raw_features(spec["kind"], smiles))


def cache_file(cache_dir: Path, kind: str, smiles: Sequence[str]) -> Path:
    """Where the raw features of these SMILES are cached (module docstring)."""
    key = json.dumps({"kind": kind, "version": FEATURES_VERSION, "rdkit": rdBase.rdkitVersion,
                      "smiles": hashlib.sha256("\n".join(smiles).encode()).hexdigest()}, sort_keys=True)
    return cache_dir / f"graph-features-{kind}-v{FEATURES_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def cached_raw_features(kind: str, smiles: Sequence[str], cache_dir: Path) -> tuple[np.ndarray, bool]:
    """:func:`raw_features`, read from the cache when there, else computed and cached; and whether it was read."""
    path = cache_file(cache_dir, kind, smiles)
    if path.is_file():
        try:
            raw = torch.load(path, weights_only=True)
            if isinstance(raw, torch.Tensor) and raw.shape[0] == len(smiles):
                return raw.numpy(), True
        except Exception:  # an unreadable cache file is recomputed
            pass
    raw = raw_features(kind, smiles, progress=True)
    atomic_save(torch.from_numpy(raw), path)
    return raw, False


def attach_graph_features(dataset: MultiTaskDataset, kind: str, cache_dir: Path) -> None:
    """Set ``graph_x`` ``[1, F]`` on every graph of ``dataset`` from its ``smiles``, normalised with statistics of
    the training split, and record the transform's spec, width, seconds and cache use in
    ``dataset.info["graph_features"]``. A dataset whose graphs have no SMILES is a one-line error naming
    ``data.graph_features``."""
    if kind == "none":
        return
    graphs = [g for split in ("train", "valid", "test") for g in dataset.splits[split]]
    smiles = [getattr(g, "smiles", None) for g in graphs]
    if not graphs or any(not isinstance(s, str) for s in smiles):
        raise ValueError(f"data.graph_features: {kind!r} computes features from each molecule's SMILES and "
                         f"{dataset.name} has none; use a molecule dataset (embedded, csv, ogbg-mol*) or set "
                         "data.graph_features: none")
    started = time.perf_counter()
    raw, hit = cached_raw_features(kind, smiles, cache_dir)
    spec = fit_transform(kind, raw[:len(dataset.splits["train"])])
    features = transform(spec, raw)
    for i, graph in enumerate(graphs):
        graph.graph_x = features[i:i + 1].clone()
    dataset.info["graph_features"] = {"spec": spec, "width": int(features.shape[1]), "from_cache": hit,
                                      "seconds": round(time.perf_counter() - started, 2)}
