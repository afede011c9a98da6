import dataclasses

import pytest
import torch
from torch_geometric.data import Batch

from graph_mtl.models import CONVS, POOLS, GNNEncoder, GraphHead, MultiTaskGNN, NodeHead
from graph_mtl.models.encoder import EDGE_CONVS, NEEDS_EDGES
from graph_mtl.run import degree_histogram


@pytest.fixture()
def batch(tiny_dataset):
    return Batch.from_data_list(tiny_dataset.splits["train"][:6])


def _encoder(conv, edges, graphs, **kw):
    return GNNEncoder(hidden=16, num_layers=2, conv=conv, node_encoder="atom",
                      edge_encoder="bond" if edges else "none",
                      pna_deg=degree_histogram(graphs) if conv == "pna" else None, **kw)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("edges", [True, False])
def test_every_conv_with_and_without_edge_features(conv, edges, batch, tiny_dataset):
    if conv in NEEDS_EDGES and not edges:
        with pytest.raises(ValueError, match=conv):
            _encoder(conv, edges, tiny_dataset.splits["train"])
        return
    enc = _encoder(conv, edges, tiny_dataset.splits["train"], virtual_node=True)
    assert enc.uses_edges == (edges and conv in EDGE_CONVS)
    h = enc(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
    assert h.shape == (batch.num_nodes, 16)
    h.sum().backward()
    assert all(p.grad is not None for p in enc.convs.parameters() if p.requires_grad)


def test_edge_features_change_the_output(batch):
    torch.manual_seed(0)
    enc = GNNEncoder(hidden=16, num_layers=2, conv="gine", node_encoder="atom", edge_encoder="bond").eval()
    a = enc(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    b = enc(batch.x, batch.edge_index, torch.zeros_like(batch.edge_attr), batch.batch)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("jk, width", [("last", 16), ("sum", 16), ("max", 16), ("cat", 48)])
def test_jumping_knowledge_widths(jk, width, batch):
    enc = GNNEncoder(hidden=16, num_layers=3, conv="gin", node_encoder="atom", jk=jk)
    assert enc.out_channels == width
    assert enc(batch.x, batch.edge_index, batch=batch.batch).shape == (batch.num_nodes, width)


def test_float_features_and_single_graph_without_batch_vector():
    enc = GNNEncoder(in_channels=5, hidden=8, num_layers=2, conv="sage", norm="layer", virtual_node=True)
    x = torch.randn(7, 5)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]])
    assert enc(x, edge_index).shape == (7, 8)


@pytest.mark.parametrize("pool", POOLS)
def test_graph_head_pools_per_graph(pool, batch):
    head = GraphHead(16, 3, pool=pool, hidden=8)
    out = head(torch.randn(batch.num_nodes, 16), batch.batch, batch.num_graphs)
    assert out.shape == (batch.num_graphs, 3)


def test_node_head_shape():
    assert NodeHead(16, 4, hidden=8)(torch.randn(10, 16)).shape == (10, 4)


def test_multitask_model_outputs_and_parameter_groups(batch, tiny_dataset):
    enc = GNNEncoder(hidden=16, num_layers=2, conv="gine", node_encoder="atom", edge_encoder="bond")
    model = MultiTaskGNN(enc, tiny_dataset.tasks)
    out = model(batch)
    assert out.preds["size"].shape == (batch.num_graphs, 1)
    assert out.preds["degree"].shape == (batch.num_nodes, 4)
    assert out.node_repr.shape == (batch.num_nodes, 16)
    shared = {id(p) for p in model.shared_parameters()}
    heads = {id(p) for t in tiny_dataset.tasks for p in model.task_parameters(t.name)}
    assert shared.isdisjoint(heads)
    assert shared | heads == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.last_shared_parameters()} <= shared
    with pytest.raises(KeyError, match="nope"):
        model.task_parameters("nope")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(conv="gcnn"), "encoder.conv"),
        (dict(conv="gat", hidden=10, heads=4), "encoder.heads"),
        (dict(conv="pna"), "pna_deg"),
        (dict(norm="group"), "encoder.norm"),
        (dict(num_layers=0), "encoder.num_layers"),
        (dict(node_encoder="linear", in_channels=0), "in_channels"),
    ],
)
def test_bad_encoder_arguments_name_the_field(kwargs, key):
    base = dict(node_encoder="atom", hidden=16)
    base.update(kwargs)
    with pytest.raises(ValueError, match=key):
        GNNEncoder(**base)


def test_row_batch_norm_accepts_a_single_row_in_training():
    from graph_mtl.models.encoder import RowBatchNorm

    norm = RowBatchNorm(4)
    norm.train()
    many = norm(torch.randn(8, 4))
    assert many.shape == (8, 4)
    single = norm(torch.ones(1, 4))  # running statistics, no error
    expected = (torch.ones(1, 4) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    assert torch.allclose(single, expected * norm.weight + norm.bias, atol=1e-6)


def _graph_task_model(tiny_dataset, pool="mean"):
    torch.manual_seed(0)
    enc = GNNEncoder(hidden=16, num_layers=2, conv="sage", node_encoder="atom", norm="none", dropout=0.0)
    graph_tasks = [t for t in tiny_dataset.tasks if t.level == "graph"]
    return MultiTaskGNN(enc, graph_tasks, pool=pool), graph_tasks


def test_nnconv_shares_one_edge_network_and_gru_across_rounds(batch):
    """Gilmer's MPNN: the parameters do not grow with the rounds, float edge features feed the edge network,
    and every round changes the embeddings (so the rounds are not a no-op)."""
    edge_attr = torch.randn(batch.edge_index.size(1), 5)
    x = torch.randn(batch.num_nodes, 11)

    def make(rounds):
        torch.manual_seed(0)
        return GNNEncoder(in_channels=11, hidden=8, num_layers=rounds, conv="nnconv", edge_encoder="linear",
                          edge_channels=5, dropout=0.0)

    two, three = make(2), make(3)
    assert sum(p.numel() for p in two.parameters()) == sum(p.numel() for p in three.parameters())
    assert len(three.convs) == 1 and three.last_layer() is three.gru
    h2, h3 = two(x, batch.edge_index, edge_attr, batch.batch), three(x, batch.edge_index, edge_attr, batch.batch)
    assert h3.shape == (batch.num_nodes, 8) and not torch.allclose(h2, h3)
    moved = three(x, batch.edge_index, edge_attr + 1.0, batch.batch)
    assert not torch.allclose(h3, moved)  # the edge network reads the edge features
    h3.sum().backward()
    assert all(p.grad is not None for p in three.parameters())


def test_set2set_is_one_shared_module_of_double_width(batch, tiny_dataset):
    enc = GNNEncoder(hidden=16, num_layers=2, conv="gine", node_encoder="atom", edge_encoder="bond")
    graph_tasks = [t for t in tiny_dataset.tasks if t.level == "graph"]
    model = MultiTaskGNN(enc, graph_tasks, pool="set2set")
    out = model(batch)
    assert out.graph_repr.shape == (batch.num_graphs, 32) and out.shared_repr is out.graph_repr
    shared = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in model.graph_pool.parameters()} <= shared
    heads = {id(p) for t in graph_tasks for p in model.task_parameters(t.name)}
    assert shared.isdisjoint(heads) and shared | heads == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match="pooled by the model"):
        model.heads[graph_tasks[0].name](out.node_repr, batch.batch, batch.num_graphs)


@pytest.mark.parametrize("pool", ["mean", "add", "max", "attention"])
def test_graph_heads_pool_once_when_the_pooling_has_no_parameters(pool, batch, tiny_dataset):
    model, tasks = _graph_task_model(tiny_dataset, pool)
    out = model(batch)
    for task in tasks:  # the same predictions as each head pooling for itself
        alone = model.heads[task.name](out.node_repr, batch.batch, batch.num_graphs)
        assert torch.allclose(out.preds[task.name], alone)
    if pool == "attention":
        assert out.graph_repr is None and out.shared_repr is out.node_repr
    else:
        assert out.shared_repr is out.graph_repr and out.graph_repr.shape == (batch.num_graphs, 16)
    mixed = MultiTaskGNN(GNNEncoder(hidden=16, num_layers=2, conv="sage", node_encoder="atom"), tiny_dataset.tasks)
    out_mixed = mixed(batch)  # node tasks too: the node representation
    assert out_mixed.graph_repr is not None and out_mixed.shared_repr is out_mixed.node_repr


def test_rep_mode_at_the_pooled_representation_matches_a_per_task_loop(batch, tiny_dataset):
    """MGDA-UB on graph tasks: weights from the Gramian of the per-task gradients at the pooled graph embedding
    (plain loop; the solver itself is checked by KKT elsewhere), update sum_i w_i grad_theta L_i (plain loop)."""
    from graph_mtl.balancers import create
    from graph_mtl.balancers.mgda import mgda_weights
    from graph_mtl.engine.step import StepEngine
    from graph_mtl.tasks import task_losses

    model, tasks = _graph_task_model(tiny_dataset)
    names = [t.name for t in tasks]
    out = model(batch)
    losses = task_losses(tasks, out.preds, batch)
    shared = list(model.shared_parameters())
    J_z = torch.stack([torch.autograd.grad(losses[n], out.graph_repr, retain_graph=True)[0].reshape(-1)
                       for n in names])
    J_theta = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[n], shared,
                                                                                  retain_graph=True)])
                           for n in names])
    w_ref = mgda_weights(J_z.double() @ J_z.double().T)
    w = StepEngine(create("mgda", names), grad_mode="rep").backward(
        losses, shared_params=shared, representation=out.shared_repr,
        task_params={n: list(model.task_parameters(n)) for n in names})
    assert torch.allclose(w, w_ref.float(), atol=1e-5)
    update = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(update, w_ref.float() @ J_theta, atol=1e-5, rtol=1e-4)


def test_any_task_name_keys_a_head_and_checkpoints_of_identifier_names_keep_their_keys(batch, tiny_dataset):
    from graph_mtl.models.multitask import head_key

    names = ["NVS_GPCR_hDRD4.4", "assay 7 ratio", "Δ-logP", "training", "type", "a%2Eb", "a.b", "plain"]
    keys = [head_key(n) for n in names]
    assert len(set(keys)) == len(names) and all("." not in k for k in keys)
    assert head_key("plain") == "plain"  # identifiers keep the key checkpoints were written with
    base = next(t for t in tiny_dataset.tasks if t.level == "graph")
    tasks = [dataclasses.replace(base, name=n) for n in names]
    model = MultiTaskGNN(GNNEncoder(hidden=8, num_layers=1, conv="sage", node_encoder="atom"), tasks)
    out = model(batch)
    assert list(out.preds) == names
    assert list(model.task_parameters("a.b")) == list(model.head("a.b").parameters())
    assert "heads.plain.mlp.0.weight" in model.state_dict()
    with pytest.raises(KeyError, match="no task"):
        model.head("missing")


def _two_copies(x, edge_index, edge_attr):
    """One graph made of two disjoint copies of (x, edge_index, edge_attr)."""
    n = x.size(0)
    return (torch.cat([x, x]), torch.cat([edge_index, edge_index + n], dim=1), torch.cat([edge_attr, edge_attr]))


@pytest.mark.parametrize("vn_pool, invariant", [("mean", True), ("add", False)])
def test_a_mean_pooled_virtual_node_keeps_node_embeddings_of_a_doubled_graph(vn_pool, invariant):
    """Two disjoint copies of a molecule in one graph: with ``vn_pool: mean`` every atom's embedding is that of
    the single copy (the virtual node reads the same mean), so a ``contrib`` read-out doubles exactly; ``add``
    (OGB) feeds the graph's size into every atom."""
    from ogb.utils import smiles2graph

    g = smiles2graph("CC(=O)Oc1ccccc1C(=O)O")
    x, edge_index, edge_attr = (torch.as_tensor(g[k]) for k in ("node_feat", "edge_index", "edge_feat"))
    torch.manual_seed(0)
    encoder = GNNEncoder(hidden=16, num_layers=3, conv="gine", node_encoder="atom", edge_encoder="bond",
                         virtual_node=True, vn_pool=vn_pool).eval()
    with torch.no_grad():
        for module in encoder.modules():  # non-trivial running statistics, so eval-mode norms are not identities
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        encoder.virtual_node.weight.normal_()
        one = encoder(x, edge_index, edge_attr)
        two = encoder(*_two_copies(x, edge_index, edge_attr))
    same = torch.allclose(two, torch.cat([one, one]), atol=1e-5)
    assert same == invariant
