"""CR-MOGM (Zhou, Zhang, Jiang, Wu, Pan, Xu & Zhang, "On the Convergence of Stochastic Multi-Objective Gradient
Manipulation and Beyond", NeurIPS 2022), as torchjd's ``CRMOGMWeighting``.

Gradient-manipulation methods (MGDA, PCGrad, CAGrad...) compute their weights from one mini-batch, which makes
them biased and keeps them from converging; CR-MOGM smooths the weights ``lambda^_k`` of a wrapped Gramian
method with a moving average,

    lambda_k = alpha lambda_(k-1) + (1 - alpha) lambda^_k,     lambda_0 = lambda^_1,

and the update is ``J^T lambda_k``. The paper's Corollary 1 lets ``alpha`` grow towards 1 as the learning rate
decays; here ``alpha`` is fixed (torchjd's form). A task's average starts from its first weight; absent tasks
keep theirs. The wrapped method is any registered Gramian method, built with ``weighting_args``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import ArgumentError, choice, number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import BALANCERS, create, register


@register("crmogm", "Zhou et al. 2022")
class CRMOGM(GramianWeighting):
    """CR-MOGM (Zhou et al. 2022): a moving average of the weights of a wrapped Gramian method.

    Args:
        weighting: the wrapped Gramian method (a registered name).
        alpha: the moving-average coefficient on the previous weights (0: none; 1: frozen).
        weighting_args: hyperparameters of the wrapped method.
    """

    def __init__(self, task_names: Sequence[str] | None = None, weighting: str = "mgda", alpha: float = 0.9,
                 weighting_args: dict | None = None) -> None:
        super().__init__(task_names)
        wrappable = sorted(n for n, cls in BALANCERS.items() if issubclass(cls, GramianWeighting) and cls is not CRMOGM)
        self.weighting = choice("weighting", weighting, wrappable)
        self.alpha = number("alpha", alpha, minimum=0, maximum=1)
        if weighting_args is not None and not isinstance(weighting_args, dict):
            raise ArgumentError("weighting_args", f"expected a mapping, got {weighting_args!r}")
        self.inner: GramianWeighting = create(weighting, self.task_names, **(weighting_args or {}))  # type: ignore[assignment]
        self.average = torch.full((self.num_tasks,), float("nan"), dtype=torch.float64)  # nan: not seen yet

    @property
    def default_grad_mode(self) -> str:  # type: ignore[override]
        return self.inner.default_grad_mode

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        fresh = self.inner.weights(gramian, losses, index).double()
        self.average = self.average.to(fresh.device)  # the state follows the device: no copy to the host
        previous = self.average[index]
        previous = torch.where(previous.isnan(), fresh, previous)
        smoothed = self.alpha * previous + (1 - self.alpha) * fresh
        self.average[index] = smoothed
        return smoothed.to(gramian.dtype)

    def state_dict(self) -> dict:
        return {"average": self.average.cpu().clone(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.average = state["average"].clone()
        self.inner.load_state_dict(state["inner"])
