"""QM9 from a tiny fixture in qm9pack's layout (tests/fixtures/qm9pack: QM9 molecules 1-8 and 212, verbatim rows of
qm9pack's qm9_part1.csv): tasks, PyG's units and atomisation energies, features, graphs, split rule, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graph_mtl.config import DataConfig
from graph_mtl.data import qm9
from graph_mtl.data.qm9 import load_qm9, qm9_split, split_sizes

FIXTURE = Path(__file__).parent / "fixtures" / "qm9pack"
HAR2EV = 27.211386246
#: PyG's reference energies of H and C atoms for U0, in eV
U0_REF_H, U0_REF_C = -13.61312172, -1029.86312267


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPH_MTL_CACHE", str(tmp_path))
    return tmp_path


def _load(graph="bond", **kw):
    return load_qm9(DataConfig(name="qm9", source="qm9pack", root=str(FIXTURE), graph=graph, **kw))


def _by_idx(dataset):
    return {int(g.idx): g for graphs in dataset.splits.values() for g in graphs}


def test_tasks_are_the_papers_eleven_targets_scored_by_mae(cache):
    dataset = _load()
    assert [t.name for t in dataset.tasks] == ["mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "Cv"]
    assert [t.columns[0] for t in dataset.tasks] == [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]
    assert all(t.kind == "regression" and t.metric == "mae" and t.level == "graph" for t in dataset.tasks)
    assert dataset.node_features == "float" and dataset.num_node_features == 11


def test_methane_targets_in_pygs_units(cache):
    """Hand values from the fixture's row 1 (CH4): Hartree x 27.211386246 = eV; atomisation energy = U0 minus
    the reference energies of one C and four H atoms."""
    y = _by_idx(_load())[0].y[0]
    assert y.shape == (19,)
    assert y[0].item() == pytest.approx(0.0)  # mu, D
    assert y[1].item() == pytest.approx(13.21)  # alpha, a0^3
    assert y[2].item() == pytest.approx(-0.3877 * HAR2EV, rel=1e-6)  # homo, eV
    assert y[5].item() == pytest.approx(35.3641)  # r2, a0^2
    assert y[6].item() == pytest.approx(0.044749 * HAR2EV, rel=1e-6)  # zpve, eV
    assert y[11].item() == pytest.approx(6.469)  # Cv, cal/mol/K
    u0_atom = -40.47893 * HAR2EV - (U0_REF_C + 4 * U0_REF_H)
    assert u0_atom == pytest.approx(-17.17, abs=0.01)
    assert y[12].item() == pytest.approx(u0_atom, abs=1e-3)


def test_atom_features_and_bonds_as_pyg(cache):
    graphs = _by_idx(_load())
    methane = graphs[0]
    carbon = methane.x[0].tolist()  # one-hot H C N O F, Z, aromatic, sp, sp2, sp3, bonded H
    assert carbon == [0, 1, 0, 0, 0, 6, 0, 0, 0, 1, 4]
    assert methane.edge_index.size(1) == 8 and methane.edge_attr[:, 0].eq(1).all()  # 4 single bonds, both ways
    n = methane.num_nodes
    key = methane.edge_index[0] * n + methane.edge_index[1]
    assert torch.equal(key, key.sort().values)  # PyG's edge order
    hcn = graphs[4]
    assert hcn.x[0, 7].item() == 1  # sp carbon
    assert hcn.edge_attr.argmax(1).tolist().count(2) == 2  # the triple bond, both directions
    pyrrole = graphs[211]  # N-methylpyrrole, given in Kekule form by qm9pack, one coordinate as 2.1997E-6
    ring = pyrrole.x[:, 6].sum().item()
    assert ring == 5 and pyrrole.edge_attr[:, 3].sum().item() == 10  # 5 aromatic atoms and bonds


def test_complete_graph_with_distances(cache):
    methane = _by_idx(_load(graph="complete"))[0]
    assert methane.edge_index.size(1) == 5 * 4 and methane.edge_attr.shape == (20, 5)
    assert not (methane.edge_index[0] == methane.edge_index[1]).any()
    bonded = methane.edge_attr[:, :4].sum(1) == 1
    assert bonded.sum().item() == 8  # the bond one-hot survives, zeros for H-H pairs
    assert methane.edge_attr[bonded, 4].sub(1.09).abs().max().item() < 0.01  # C-H length in Angstrom
    assert methane.edge_attr[~bonded, 4].min().item() > 1.7  # H-H


def test_split_rule():
    assert split_sizes(130_831, None) == (10_000, 10_000, 110_831)
    assert split_sizes(130_831, 2000) == (10_000, 180, 2000)
    assert split_sizes(9, None) == (1, 1, 7)
    full, small = qm9_split(1000, None, seed=3), qm9_split(1000, 100, seed=3)
    assert set(small["test"]) <= set(full["test"]) and set(small["train"]) <= set(full["train"])
    assert set(full["train"]).isdisjoint(full["valid"]) and set(full["valid"]).isdisjoint(full["test"])
    assert qm9_split(1000, None, seed=4) != full


def test_limit_is_the_training_size_and_second_load_hits_the_cache(cache, monkeypatch):
    first = _load(limit=3)
    assert {k: len(v) for k, v in first.splits.items()} == {"train": 3, "valid": 1, "test": 1}
    assert list(cache.glob("qm9pack-v*.pt"))

    def fail(*args):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(qm9, "read_qm9pack", fail)
    again = _load(limit=3)
    assert [int(g.idx) for g in again.splits["train"]] == [int(g.idx) for g in first.splits["train"]]
    assert torch.equal(again.splits["train"][0].y, first.splits["train"][0].y)


def test_bad_source_folder_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        load_qm9(DataConfig(name="qm9", source="qm9pack", root=str(tmp_path)))


def test_pyg_source_reads_pygs_qm9_class(cache, tmp_path, monkeypatch):
    """The PyG path splits and transforms PyG's own Data objects (here the fixture's molecules, standing in for
    ``torch_geometric.datasets.QM9``, which needs a download)."""
    import torch_geometric.datasets

    molecules = [qm9.molecule_graph(row)[0] for row in qm9.read_qm9pack(FIXTURE)]
    roots = []

    def fake_qm9(root):
        roots.append(root)
        return molecules

    monkeypatch.setattr(torch_geometric.datasets, "QM9", fake_qm9)
    dataset = load_qm9(DataConfig(name="qm9", source="pyg", root=str(tmp_path / "QM9")))
    assert roots == [str(tmp_path / "QM9")]
    offline = _load(graph="complete")
    for split in ("train", "valid", "test"):
        got, want = dataset.splits[split], offline.splits[split]
        assert [int(g.idx) for g in got] == [int(g.idx) for g in want]
        assert all(torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.y, b.y) for a, b in zip(got, want))
