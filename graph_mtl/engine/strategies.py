"""Per-task training strategies: per-task learning rates, loss-weight schedules and pretrain-then-finetune.

* ``train.task_lr: {task: lr}``: task ``t``'s head (:meth:`MultiTaskGNN.task_parameters`) is an optimizer
  param group of learning rate ``lr_t``; everything else keeps ``train.lr`` (group 0). The schedulers act on
  every group: ``cosine`` gives ``lr_g(e) = lr_g (1 + cos(pi e / E)) / 2`` and ``step`` ``lr_g 0.5^k``, so the
  ratios ``lr_t / lr`` hold all run long; ``plateau`` multiplies every group by the same factor, until a group
  reaches the ``train.min_lr`` floor (a floor is the one place where the ratios change).
* ``train.weight_schedule``: a factor ``s(e)`` multiplying every task's loss except the main task's
  (:class:`WeightSchedule`).
* ``train.init_from`` / ``train.freeze_epochs``: the shared encoder (and shared pooling) of a trained run, the
  heads of tasks of the same name and shapes, and the shared parameters held still for the first epochs
  (:func:`load_pretrained`, :func:`freeze_shared`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from graph_mtl.engine.checkpoint import load_checkpoint
from graph_mtl.models.multitask import MultiTaskGNN, head_key

#: the kinds of ``train.weight_schedule``
SCHEDULE_KINDS: tuple[str, ...] = ("warmup", "linear", "step")
#: its fields and their defaults (``None``: required)
SCHEDULE_FIELDS: dict[str, Any] = {"kind": None, "main_task": None, "epochs": None, "start": 0.0, "factor": 2.0}
#: prefixes of the shared weights in a model's state dict (the encoder and the shared learned pooling)
SHARED_PREFIXES: tuple[str, ...] = ("encoder.", "graph_pool.")


# ---------------------------------------------------------------------------------------- per-task learning rates

def check_task_lr(task_lr: dict[str, Any]) -> None:
    """Every ``train.task_lr`` value must be a finite number > 0 (task names are checked with the model)."""
    for name, lr in task_lr.items():
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"train.task_lr: the learning rate of {name!r} must be a number > 0, got {lr!r}")


def param_groups(model: MultiTaskGNN, base_lr: float, task_lr: dict[str, float]) -> list[dict[str, Any]]:
    """Optimizer param groups: group 0 every parameter at ``base_lr`` except the heads of ``task_lr``'s tasks,
    then one group per such task (in the model's task order) at its own learning rate.

    A task that is not the model's, or heads grouped into one tensor for all tasks, is a one-line ``ValueError``
    naming ``train.task_lr``."""
    check_task_lr(task_lr)
    unknown = [name for name in task_lr if name not in model.task_names]
    if unknown:
        raise ValueError(f"train.task_lr: {unknown[0]!r} is not a task of this dataset; use task names from "
                         f"{model.task_names}")
    if task_lr and model.grouped is not None:
        raise ValueError("train.task_lr: the heads are grouped (one tensor holds every task's head, so no task can "
                         "have its own learning rate); set model.grouped_heads=false")
    own = {name: list(model.task_parameters(name)) for name in model.task_names if name in task_lr}
    taken = {id(p) for params in own.values() for p in params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in taken], "lr": base_lr}]
    groups += [{"params": params, "lr": float(task_lr[name]), "task": name} for name, params in own.items()]
    return groups


# ---------------------------------------------------------------------------------------- loss-weight schedule

@dataclass(frozen=True)
class WeightSchedule:
    r"""A factor :math:`s(e)` on the loss of every task but ``main_task``, where :math:`e` is the number of
    completed epochs (0 during the first epoch), :math:`N` = ``epochs`` and :math:`s_0` = ``start``:

    * ``warmup``: :math:`s(e) = s_0` for :math:`e < N`, then 1: the main task trains alone (or nearly so) for
      N epochs, then the others join at full weight;
    * ``linear``: :math:`s(e) = s_0 + (1 - s_0)\min(e / N, 1)`, from :math:`s_0` at the first epoch to 1 from
      epoch N on;
    * ``step``: :math:`s(e) = \min(1, s_0 \gamma^{\lfloor e / N \rfloor})` with :math:`\gamma` = ``factor``
      (> 1) and :math:`s_0 > 0`: multiplied by :math:`\gamma` every N epochs, capped at 1.

    The balancer sees :math:`\ell_{main}` and :math:`s(e)\,\ell_t` for the other tasks. Losses are scaled rather
    than the balancer's output weights because the schedule is then part of the objective every balancer reads,
    whatever it does with it: with ``ew`` (and any fixed weighting) task t's gradient is exactly :math:`s(e)` times
    its unscheduled gradient; a balancer with learned or loss-driven weights (uw, dwa, gradnorm, famo) adapts to
    the scaled losses as to any others, where multiplying its output would fight its own update (and its state
    would record weights it never chose). The price: a method that is invariant to the scale of a task's
    gradient (e.g. IMTL, Nash-MTL, or the loss ratios of DWA) partly undoes a factor > 0; a factor 0 removes the
    task from every method.
    """

    kind: str
    main_task: str
    epochs: int
    start: float = 0.0
    factor: float = 2.0

    def __call__(self, completed_epochs: int) -> float:
        """:math:`s(e)` after ``completed_epochs`` epochs."""
        e, n, s0 = max(completed_epochs, 0), self.epochs, self.start
        if self.kind == "warmup":
            return s0 if e < n else 1.0
        if self.kind == "linear":
            return s0 + (1.0 - s0) * min(e / n, 1.0)
        return min(1.0, s0 * self.factor ** (e // n))

    def scale(self, losses: dict[str, Tensor], completed_epochs: int) -> dict[str, Tensor]:
        """``losses`` with every task but the main one multiplied by :math:`s(e)` (unchanged where it is 1)."""
        s = self(completed_epochs)
        if s == 1.0:
            return losses
        return {name: loss if name == self.main_task else loss * s for name, loss in losses.items()}


def parse_schedule(raw: dict[str, Any] | None, task_names: list[str] | None = None) -> WeightSchedule | None:
    """``train.weight_schedule`` checked field by field (one-line ``ValueError`` naming
    ``train.weight_schedule.<field>``); ``task_names``: also check ``main_task`` against them."""
    if not raw:
        return None
    key = "train.weight_schedule"
    for name in raw:
        if name not in SCHEDULE_FIELDS:
            raise ValueError(f"{key}.{name}: unknown field; the fields are {list(SCHEDULE_FIELDS)}")
    missing = [name for name, default in SCHEDULE_FIELDS.items() if default is None and raw.get(name) is None]
    if missing:
        raise ValueError(f"{key}.{missing[0]}: required, e.g. {{kind: warmup, main_task: NAME, epochs: 5}}")
    kind, main, epochs = raw["kind"], raw["main_task"], raw["epochs"]
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"{key}.kind: unknown value {kind!r}; choose one of {list(SCHEDULE_KINDS)}")
    if not isinstance(main, str):
        raise ValueError(f"{key}.main_task: expected a task name, got {main!r}")
    if task_names is not None and main not in task_names:
        raise ValueError(f"{key}.main_task: {main!r} is not a task of this dataset; choose one of {task_names}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{key}.epochs: must be an integer >= 1, got {epochs!r}")
    start = _number(raw.get("start", SCHEDULE_FIELDS["start"]), f"{key}.start")
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"{key}.start: must be in [0, 1], got {start}")
    factor = SCHEDULE_FIELDS["factor"]
    if "factor" in raw:
        if kind != "step":
            raise ValueError(f"{key}.factor: only for kind step (kind is {kind!r}); remove it")
        factor = _number(raw["factor"], f"{key}.factor")
        if factor <= 1.0:
            raise ValueError(f"{key}.factor: must be > 1 (the factor grows every {key}.epochs), got {factor}")
    if kind == "step" and start <= 0.0:
        raise ValueError(f"{key}.start: kind step multiplies the start, which must be > 0 (e.g. 0.25), got {start}")
    return WeightSchedule(kind, main, epochs, start, factor)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key}: must be a finite number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------- pretrain, then fine-tune

def checkpoint_path(source: str | Path) -> Path:
    """``train.init_from``'s file: a run folder's ``best.pt`` or a ``.pt`` path (a one-line error otherwise)."""
    path = Path(source)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise FileNotFoundError(f"train.init_from: {str(path)!r} holds no best.pt; give a run folder written by "
                                    "graph-mtl train or a .pt checkpoint")
        return path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no run folder or checkpoint at {str(path)!r}; give a run folder "
                                "written by graph-mtl train or a .pt checkpoint")
    return path


def load_pretrained(model: MultiTaskGNN, source: str | Path) -> str:
    """Copy the shared weights (encoder and shared pooling, with their buffers) of a checkpoint into ``model``,
    and the head of every task whose name and parameter shapes match; other heads keep their fresh
    initialisation. Returns the log line (``encoder from RUN; heads loaded: a, b; new: c``).

    Nothing is changed on an error: an unreadable file (read as :func:`load_checkpoint` reads any checkpoint) or
    a shared weight missing or of another shape is a one-line ``ValueError`` naming ``train.init_from`` (and the
    first such weight with both shapes)."""
    path = checkpoint_path(source)
    saved: dict[str, Tensor] = load_checkpoint(path, "cpu", required=("model",), key="train.init_from")["model"]
    current = model.state_dict()
    shared = [k for k in current if k.startswith(SHARED_PREFIXES)]
    foreign = [k for k in saved if k.startswith(SHARED_PREFIXES) and k not in current]
    for k in shared:
        if k not in saved:
            raise ValueError(f"train.init_from: {str(path)!r} has no shared weight {k!r} (another encoder); use the "
                             "model section of the pretraining run")
        if tuple(saved[k].shape) != tuple(current[k].shape):
            raise ValueError(f"train.init_from: {k!r} is {tuple(saved[k].shape)} in {str(path)!r} and "
                             f"{tuple(current[k].shape)} here; use the model section of the pretraining run")
    if foreign:
        raise ValueError(f"train.init_from: {str(path)!r} has shared weight {foreign[0]!r} that this model lacks "
                         "(another encoder); use the model section of the pretraining run")
    update = {k: saved[k] for k in shared}
    loaded, new = [], []
    for name in model.task_names:
        prefix = f"heads.{head_key(name)}."
        mine = [k for k in current if k.startswith(prefix)] if model.grouped is None else []
        theirs = [k for k in saved if k.startswith(prefix)]
        if mine and sorted(mine) == sorted(theirs) and all(saved[k].shape == current[k].shape for k in mine):
            update.update({k: saved[k] for k in mine})
            loaded.append(name)
        else:
            new.append(name)
    model.load_state_dict({**current, **update})
    return (f"encoder from {source}; heads loaded: {', '.join(loaded) or '-'}; new: {', '.join(new) or '-'}")


def freeze_shared(params: Iterable[nn.Parameter]) -> None:
    """Drop the gradients of ``params`` after the backward: the optimizer then skips them entirely (no update,
    no weight decay, no Adam moments, no step count), so when they unfreeze Adam starts their moments from
    zero with its own bias correction, as for a fresh parameter. Buffers are not parameters: batch-norm running
    statistics of the encoder still follow the new data in training mode. The shared gradients are still computed
    (the balancers read them)."""
    for p in params:
        p.grad = None

