"""PCGrad inside your own training loop, on a plain PyG model that knows nothing about graph_mtl."""

import torch
from torch import nn
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINConv, global_mean_pool

from graph_mtl import StepEngine, create, task_losses
from graph_mtl.data import load_embedded


class TwoHeadGIN(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(120, hidden)  # atomic number -> vector
        self.convs = nn.ModuleList(GINConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())) for _ in range(3))
        self.logp, self.charge = nn.Linear(hidden, 1), nn.Linear(hidden, 1)

    def forward(self, data):
        h = self.embed(data.x[:, 0])
        for conv in self.convs:
            h = torch.relu(conv(h, data.edge_index))
        return {"logp": self.logp(global_mean_pool(h, data.batch)), "gasteiger": self.charge(h)}


def main(steps: int = 200, limit: int | None = None, cache_dir=None, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)  # the weights, and below the batches: the printed figures reproduce
    dataset = load_embedded(cache_dir=cache_dir, limit=limit)
    tasks = [t for t in dataset.tasks if t.name in ("logp", "gasteiger")]
    model = TwoHeadGIN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    balancer = StepEngine(create("pcgrad", [t.name for t in tasks], seed=seed), grad_mode="exact")
    shared = [p for name, p in model.named_parameters() if name.startswith(("embed", "convs"))]
    history = []
    loader = DataLoader(dataset.splits["train"], batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    while len(history) < steps:
        for batch in loader:
            optimizer.zero_grad()
            losses = task_losses(tasks, model(batch), batch)
            balancer.backward(losses, shared_params=shared)  # heads get their own plain gradients
            optimizer.step()
            history.append(sum(loss.item() for loss in losses.values()))
            if len(history) == steps:
                break
    window = max(1, steps // 4)  # single batches are noisy: compare the first and last quarter of the steps
    print(f"summed loss: first {window} steps {sum(history[:window]) / window:.3f}, "
          f"last {window} steps {sum(history[-window:]) / window:.3f}")
    return history


if __name__ == "__main__":
    main()
