"""Task balancers: pure weightings over losses or per-task gradients, registered by name."""

from graph_mtl.balancers import (  # noqa: F401  (register the built-in balancers)
    alignedmtl,
    cagrad,
    dbmtl,
    dwa,
    famo,
    graddrop,
    gradnorm,
    gradvac,
    imtl,
    mgda,
    nashmtl,
    pcgrad,
    rlw,
    upgrad,
    uw,
    weighting,
)
from graph_mtl.balancers.base import Balancer, LossWeighting
from graph_mtl.balancers.dropin import PCGrad
from graph_mtl.balancers.gradient_method import GradientBalancer
from graph_mtl.balancers.registry import BALANCERS, create, register

__all__ = ["BALANCERS", "Balancer", "GradientBalancer", "LossWeighting", "PCGrad", "create", "register"]
