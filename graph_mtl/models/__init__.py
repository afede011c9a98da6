"""Graph models: the shared encoder, the task heads and the multi-task model."""

from graph_mtl.models.encoder import CONVS, GNNEncoder
from graph_mtl.models.heads import POOLS, GraphHead, NodeHead
from graph_mtl.models.multitask import MultiTaskGNN, MultiTaskOutput

__all__ = ["CONVS", "POOLS", "GNNEncoder", "GraphHead", "MultiTaskGNN", "MultiTaskOutput", "NodeHead"]
