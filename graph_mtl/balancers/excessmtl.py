"""ExcessMTL (He, Zhou, Zhang, Yang & Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024).

Task weights ``w`` on the simplex (initially uniform) move by exponentiated gradient towards the tasks with the
largest *excess risk* (eq. 9): ``w_i <- w_i exp(eta e_i) / Z``. The excess risk of task ``i`` is its
second-order estimate ``e_i = g_i^T H_i^(-1) g_i`` (eq. 6) with the diagonal AdaGrad Hessian proxy ``H_i =
diag(sqrt(sum_{steps} g_i^2 + 1e-7))`` (eq. 7), divided by a baseline (Section 3.2): the first step's ``e_i``
(used raw at that step, as the official code, LibMTL and torchjd), or with ``n_warmup_steps > 0`` the mean
``e_i`` of that many uniform-weight warm-up steps (Appendix C.1). The update is ``w^T J``.

The squared-gradient sums are per parameter (``[T, P]``, float64 so that the squares of huge gradients do not
overflow), so the method needs ``grad_mode="exact"``. Tasks absent from a step keep their statistics and their
weight; the present ones share the mass they hold. ``robust_step_size`` defaults to LibMTL's 1e-2 (torchjd's
is 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import integer, number
from graph_mtl.balancers.base import Aggregator
from graph_mtl.balancers.registry import register

HESSIAN_EPS = 1e-7


@register("excessmtl", "He et al. 2024")
class ExcessMTL(Aggregator):
    """ExcessMTL (He et al. 2024): exponentiated-gradient weights on the tasks' estimated excess risks.

    Args:
        robust_step_size: the step ``eta`` of the exponentiated weight update.
        n_warmup_steps: uniform-weight steps whose mean excess risk is the baseline (0: the first step's).
    """

    allows_rep = False

    def __init__(self, task_names: Sequence[str] | None = None, robust_step_size: float = 1e-2,
                 n_warmup_steps: int = 0) -> None:
        super().__init__(task_names)
        self.robust_step_size = number("robust_step_size", robust_step_size, above=0)
        self.n_warmup_steps = integer("n_warmup_steps", n_warmup_steps, minimum=0)
        t = self.num_tasks
        self.w = torch.full((t,), 1 / t, dtype=torch.float64)
        self.baseline = torch.full((t,), float("nan"), dtype=torch.float64)  # nan: not set yet
        self.warm_sum = torch.zeros(t, dtype=torch.float64)
        self.warm_count = torch.zeros(t, dtype=torch.float64)
        self.steps = 0
        self.sq_sum: Tensor | None = None

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        sq = J.double() ** 2
        if self.sq_sum is None:
            self.sq_sum = sq.new_zeros(self.num_tasks, sq.shape[1])
        self.sq_sum = self.sq_sum.to(sq.device)
        self.sq_sum[index] += sq
        # the state follows the device: no copy to the host per step
        self.w, self.baseline, self.warm_sum, self.warm_count = (
            x.to(sq.device) for x in (self.w, self.baseline, self.warm_sum, self.warm_count))
        excess = (sq / torch.sqrt(self.sq_sum[index] + HESSIAN_EPS)).sum(dim=1)
        w = self.w[index]
        self.steps += 1
        if self.steps <= self.n_warmup_steps:  # uniform weights while the statistics build up
            self.warm_sum[index] += excess
            self.warm_count[index] += 1
        else:
            first = self.baseline[index].isnan()
            if self.n_warmup_steps > 0:  # the warm-up mean (this step's own where a task missed the warm-up)
                count = self.warm_count[index]
                start = torch.where(count > 0, self.warm_sum[index] / count.clamp_min(1), excess)
                baseline = torch.where(first, start, self.baseline[index])
                scaled = excess / (baseline + HESSIAN_EPS)
            else:  # the first step's excess risk, used raw at that step
                baseline = torch.where(first, excess, self.baseline[index])
                scaled = torch.where(first, excess, excess / (baseline + HESSIAN_EPS))
            self.baseline[index] = baseline
            w = torch.softmax(torch.log(w) + self.robust_step_size * scaled, dim=0) * w.sum()
            self.w[index] = w
        weights = (w / w.sum()).to(J.device)
        return weights.to(J.dtype) @ J, weights.float()

    def state_dict(self) -> dict:
        return {"w": self.w.cpu().clone(), "baseline": self.baseline.cpu().clone(),
                "warm_sum": self.warm_sum.cpu().clone(), "warm_count": self.warm_count.cpu().clone(),
                "steps": self.steps,
                "sq_sum": None if self.sq_sum is None else self.sq_sum.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.w, self.baseline = state["w"].clone(), state["baseline"].clone()
        self.warm_sum, self.warm_count = state["warm_sum"].clone(), state["warm_count"].clone()
        self.steps = int(state["steps"])
        self.sq_sum = None if state["sq_sum"] is None else state["sq_sum"].clone()
