"""The training engine: fit / evaluate / test with a balancer, checkpoints, early stopping and logs."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graph_mtl.balancers.base import Method
from graph_mtl.config import TrainConfig
from graph_mtl.engine.averaging import WeightAverage
from graph_mtl.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from graph_mtl.engine.distributed import DataParallelStepEngine, GradientSync, gather_predictions, sharded_losses
from graph_mtl.engine.metrics import evaluate_tasks, trivial_baseline
from graph_mtl.engine.monitor import ConflictMonitor
from graph_mtl.engine.step import StepEngine
from graph_mtl.engine.strategies import freeze_shared, param_groups, parse_schedule
from graph_mtl.models.multitask import MultiTaskGNN
from graph_mtl.tasks import Scalers, Task, check_labels, collect_labels, fit_scalers, task_losses


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def build_optimizer(params: Iterable[nn.Parameter] | list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) with the config's learning rate and weight decay; ``params`` may be
    param groups with their own ``lr`` (``train.task_lr``, :func:`~graph_mtl.engine.strategies.param_groups`)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """``cosine`` over the epochs after the warm-up, ``step`` (halve every third of them), ``plateau`` on the
    monitor (times ``plateau_factor`` after ``plateau_patience`` epochs without gain, down to ``min_lr``), or
    none; with ``warmup_epochs`` N > 0 wrapped in a :class:`Warmup` of N epochs. Each acts on every param group
    alike: the ratios of ``train.task_lr`` to ``train.lr`` hold (but at ``min_lr``'s floor)."""
    epochs = cfg.epochs - cfg.warmup_epochs
    if cfg.scheduler == "cosine":
        after = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    elif cfg.scheduler == "step":
        after = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.5)
    elif cfg.scheduler == "plateau":
        after = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.plateau_factor,
                                                           patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    else:
        after = None
    return Warmup(optimizer, cfg.warmup_epochs, after) if cfg.warmup_epochs > 0 else after


class Warmup:
    r"""Linear learning-rate warm-up per epoch, then the scheduler ``after``: epoch :math:`k \le N` trains at
    :math:`\eta_k = \eta \, k / N` (:math:`\eta` each parameter group's learning rate when built), epoch
    :math:`N + 1` at :math:`\eta`, and from then on ``after`` steps once per epoch as it would alone (cosine
    decays over the remaining epochs, plateau counts epochs from the end of the warm-up).

    ``after`` must be built before this (it records :math:`\eta`); the learning rates live in the optimiser's
    state and the epochs done in :meth:`state_dict`, so a resume continues across the warm-up exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, after=None) -> None:
        self.optimizer, self.epochs, self.after = optimizer, epochs, after
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.done = 0
        self._set(1)

    def _set(self, epoch: int) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * min(epoch, self.epochs) / self.epochs

    def step(self, score: float | None = None) -> None:
        """After an epoch: the next warm-up rate, or (once the warm-up is over) a step of ``after``."""
        self.done += 1
        if self.done <= self.epochs:
            self._set(self.done + 1)
        else:
            step_scheduler(self.after, score)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "base_lrs": list(self.base_lrs),
                "after": None if self.after is None else self.after.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done, self.base_lrs = state["done"], list(state["base_lrs"])
        if self.after is not None and state["after"] is not None:
            self.after.load_state_dict(state["after"])


def step_scheduler(scheduler, score: float | None) -> None:
    """One epoch's step of a scheduler (``None``: nothing); ``ReduceLROnPlateau`` reads the monitor ``score``."""
    if isinstance(scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau, Warmup)):
        scheduler.step(score)
    elif scheduler is not None:
        scheduler.step()


class Trainer:
    """Trains a :class:`MultiTaskGNN` with a balancer.

    Each step: forward, the masked loss of every task present in the batch, the step engine's ``backward``
    (which leaves the balanced gradient in ``.grad``), gradient clipping, optimiser step, and - for a method that
    asks for it (FAMO) - the same batch evaluated again for the method. A skipped step (no task present, or a
    non-finite loss under ``nonfinite: skip``) changes nothing and is counted in ``skipped_steps``. After each
    epoch the model is evaluated on the validation loader; ``best.pt`` keeps the best epoch by ``cfg.monitor``
    and ``last.pt`` the latest state, both written atomically, so a run can resume after a crash.

    The monitor: ``gain`` is the mean over tasks of the relative gain of the validation metric over the trivial
    baseline (``(v - b) / |b|`` for metrics to maximise, ``(b - v) / |b|`` for errors), ``loss`` is minus the
    validation loss, and a task name monitors that task's metric.

    Args:
        model: the multi-task model.
        balancer: the balancing method, or a :class:`StepEngine` around one (to set ``grad_mode`` etc.).
        cfg: optimisation settings.
        train_graphs: the training graphs (to fit target scalers and trivial baselines).
        out_dir: where logs and checkpoints go (``None``: nothing is written).
        device: torch device.
        seed: seed of the shuffling of each epoch.
        log: where one-line progress messages go.
        summary: ``summary(y_true, y_pred) -> {name: value}``, extra whole-dataset scores computed at every
            evaluation from the per-task labels and predictions (OGB's Evaluator for OGB datasets); they are
            logged as ``valid/<name>`` and reported under ``"summary"``.
        monitor: a gradient-conflict monitor, observed in every step before the balancer's backward.
        sync: the process group of a data-parallel run (``engine/distributed.py``): each process trains on its
            shard of every batch, losses and gradients are those of the global batch, evaluation gathers every
            shard's predictions, and only rank 0 writes files and logs progress.
    """

    def __init__(self, model: MultiTaskGNN, balancer: Method | StepEngine, cfg: TrainConfig, train_graphs: list,
                 out_dir: str | Path | None = None, device: torch.device | str = "cpu", seed: int = 0,
                 log: Callable[[str], None] = print,
                 summary: Callable[[dict, dict], dict[str, Any]] | None = None,
                 monitor: ConflictMonitor | None = None, sync: GradientSync | None = None) -> None:
        self.device = torch.device(device)
        self.sync = sync
        if sync is not None and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics of the global batch
        self.monitor = monitor
        self.summary = summary
        self.model = model.to(self.device)
        if cfg.compile:
            compile_encoder(self.model)
        self.tasks: list[Task] = model.tasks
        engine = balancer if isinstance(balancer, StepEngine) else StepEngine(balancer, nonfinite=cfg.nonfinite)
        if sync is not None:
            sync.broadcast_module(self.model)  # every process starts from rank 0's weights
            if not isinstance(engine, DataParallelStepEngine):
                engine = DataParallelStepEngine.of(engine, sync)  # and from its balancer state
        self.engine = engine
        self.model.per_task_rows = engine.takes_task_gradients  # grouped heads: rows only for those who take them
        self._shared = list(self.model.shared_parameters())
        self._task_params = {t.name: list(self.model.task_parameters(t.name)) for t in self.tasks}
        self._last_shared = list(self.model.last_shared_parameters())
        engine.watch(self.model, self._shared)  # grad_mode "gramian" records the forward; others ignore it
        check_sharing(self.model, engine, cfg.balancer, self._shared, monitor is not None)
        self._regularizer_sum = torch.zeros((), device=self.device)  # the epoch's sum of the model's penalty
        self._regularized = False
        self.cfg = cfg
        self.seed = seed
        self.log = log
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writes = self.out_dir is not None and (sync is None or sync.is_main)
        self.optimizer = build_optimizer(param_groups(self.model, cfg.lr, cfg.task_lr), cfg)
        #: ``train.weight_schedule``: the factor on every task's loss but the main task's (``None``: off)
        self.schedule = parse_schedule(cfg.weight_schedule, [t.name for t in self.tasks])
        self.scheduler = build_scheduler(self.optimizer, cfg)
        labels = collect_labels(self.tasks, train_graphs)
        check_labels(self.tasks, labels)
        self.scalers: Scalers = fit_scalers(self.tasks, labels) if cfg.standardize_targets else {}
        self.model.calibrate_sums(self.scalers)  # (a resumed run's checkpoint then replaces these weights)
        self.train_labels = {name: y.numpy() for name, y in labels.items()}
        self.epoch = 0
        self.step = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        #: plain description of the run saved in every checkpoint (``engine/metadata.py``; run.py sets it)
        self.metadata: dict[str, Any] | None = None
        self._amp = cfg.amp
        # fp16 needs loss scaling; the balancer unscales per-task gradients before combining them
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        #: ``train.ema_decay``: the moving average of the weights that is evaluated and saved (``None``: off)
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        check_monitor(cfg.monitor, self.tasks)

    # ------------------------------------------------------------------------------------------ training

    def fit(self, train_loader, valid_loader, resume: str | Path | None = None) -> dict[str, Any]:
        """Train for ``cfg.epochs`` epochs (or until early stopping); returns the last epoch's record."""
        if resume is not None:
            self.load(resume)
            self.log(f"resumed from {resume} at epoch {self.epoch}")
        record: dict[str, Any] = {}
        while self.epoch < self.cfg.epochs:
            self.epoch += 1
            started = time.perf_counter()
            if self.monitor is not None:
                self.monitor.epoch = self.epoch
            _reseed_loader(train_loader, self.seed * 100_003 + self.epoch)
            train_stats = self.train_epoch(train_loader)
            with self.evaluated_weights():
                valid = self.evaluate(valid_loader)
            score = self.monitor_score(valid)
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
            else:
                self.bad_epochs += 1
            self._step_scheduler(score)
            record = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
                      **{f"lr/{g['task']}": g["lr"] for g in self.optimizer.param_groups if "task" in g},
                      **({"loss_factor": self.schedule(self.epoch - 1)} if self.schedule is not None else {}),
                      **train_stats,
                      "valid_loss": valid["loss"], "valid_gain": valid["gain"], "monitor": score,
                      **{f"valid/{k}": v for k, v in valid["per_task"].items()},
                      **{f"valid/{k}": v for k, v in valid["summary"].items() if isinstance(v, (int, float))},
                      "seconds": time.perf_counter() - started}
            self.history.append(record)
            self._write_epoch(record, improved)
            mark = "  *best" if improved else ""
            extra = "".join(f"valid {k} {v:.4f}  " for k, v in valid["summary"].items() if isinstance(v, float))
            if self.cfg.monitor not in ("gain", "loss"):  # the value "*best" refers to
                value = valid["per_task"][self.cfg.monitor]
                extra += f"valid {self.cfg.monitor} {'-' if value is None else f'{value:.4f}'}  "
            self.log(f"epoch {self.epoch:3d}/{self.cfg.epochs}  train loss {train_stats['train_loss']:.4f}  "
                     f"valid loss {valid['loss']:.4f}  valid gain {valid['gain']:+.3f}  {extra}"
                     f"{record['seconds']:.1f}s{mark}")
            if self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience:
                self.log(f"early stop: no improvement of '{self.cfg.monitor}' for {self.cfg.patience} epochs")
                break
        return record

    def train_epoch(self, loader) -> dict[str, float]:
        """One pass over ``loader``; returns mean training losses and mean balancer weights."""
        self.model.train()
        names = [t.name for t in self.tasks]
        loss_sum = torch.zeros(len(names), device=self.device)
        loss_count = torch.zeros(len(names), device=self.device)
        weight_sum = torch.zeros(len(names), device=self.device)
        steps = 0
        bar = tqdm(loader, desc=f"epoch {self.epoch}", leave=False, file=sys.stderr,
                   disable=not (self.cfg.progress and sys.stderr.isatty() and (self.sync is None or self.sync.is_main)))
        step_rows = []
        skipped = 0
        # under a process group every process must take the same number of batches (each holds collectives)
        batches = min(self.sync.gather(len(loader))) if self.sync is not None else None
        for batch_number, batch in enumerate(bar):
            if self.cfg.max_steps_per_epoch is not None and steps >= self.cfg.max_steps_per_epoch:
                break
            if batches is not None and batch_number >= batches:
                break
            losses, weights = self.train_step(batch)
            if weights is None:
                skipped += 1
                continue
            steps += 1
            present = torch.tensor([n in losses for n in names], device=self.device)
            values = torch.stack([losses[n].detach() if n in losses else loss_sum.new_zeros(()) for n in names])
            loss_sum += values
            loss_count += present
            weight_sum += weights
            step_rows.append((self.epoch, self.step, values, present, weights))
            if not bar.disable and steps % 10 == 0:
                means = (loss_sum / loss_count.clamp(min=1)).tolist()
                shown = {n[:8]: f"{v:.3f} w{w:.2f}" for n, v, w in zip(names[:6], means, weights.tolist())}
                bar.set_postfix(shown)
        self._write_steps(step_rows, names)
        regularizer = float(self._regularizer_sum) / max(steps, 1)
        self._regularizer_sum.zero_()
        mean_loss = (loss_sum / loss_count.clamp(min=1)).tolist()
        mean_weight = (weight_sum / max(steps, 1)).tolist()
        stats = {"train_loss": float(np.mean([v for v, c in zip(mean_loss, loss_count.tolist()) if c > 0] or [0.0])),
                 "skipped_steps": skipped}
        if self._regularized:
            stats["train_regularizer"] = regularizer
        stats.update({f"train_loss/{n}": v for n, v in zip(names, mean_loss)})
        stats.update({f"weight/{n}": v for n, v in zip(names, mean_weight)})
        self.engine.on_epoch_end()
        return stats

    @property
    def frozen(self) -> bool:
        """Whether the shared parameters are held still in the current epoch (``train.freeze_epochs``; a step
        taken outside :meth:`fit`, at epoch 0, counts as one of the first epoch)."""
        return self.cfg.freeze_epochs > 0 and self.epoch <= self.cfg.freeze_epochs

    def train_step(self, batch) -> tuple[dict[str, Tensor], Tensor | None]:
        """One optimisation step on ``batch``; returns the task losses (before ``train.weight_schedule``'s factor)
        and the balancer's weights ``[T]`` (``None`` when the step engine skipped the step: nothing was changed).
        During ``train.freeze_epochs`` the shared parameters' gradients are dropped before the optimizer step."""
        with compiled_scope(self.cfg.compile):
            return self._train_step(batch)

    def _train_step(self, batch) -> tuple[dict[str, Tensor], Tensor | None]:
        batch = to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(batch)
        raw = self._losses(out.preds, batch)
        losses = self._scheduled(raw)
        scaler = self.grad_scaler
        # scale(1) is the current scale as a device tensor: no host sync (it also initialises the scaler)
        grad_scale = scaler.scale(torch.ones((), device=self.device)) if scaler.is_enabled() else None
        if self.monitor is not None:  # before the balancer, whose backward frees the graph (engine/monitor.py)
            self.monitor.observe(self.step + 1, losses, self._shared, out.shared_repr, None, grad_scale=grad_scale)
        weights = self.engine.backward(
            losses,
            shared_params=self._shared,
            representation=out.balancer_repr,
            task_params=self._task_params,
            last_shared_params=self._last_shared,
            grad_scale=grad_scale,
        )
        if self.monitor is not None:  # the step's weights join the observation made above
            self.monitor.record_weights(weights if weights is not None else torch.zeros(len(self.tasks)))
        if weights is None:
            return raw, None
        self._add_regularizer(grad_scale)
        if self.frozen:
            freeze_shared(self._shared)
        scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        scaler.step(self.optimizer)  # skipped (and the scale lowered) when a gradient is inf or NaN
        scaler.update()
        self.step += 1
        if self.average is not None:
            self.average.update(self.model)
        if self.engine.wants_losses_after_step:
            self.engine.after_step(self._scheduled(self._losses_after_step(batch)))
        return raw, weights.to(self.device)

    def _scheduled(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """``losses`` as the balancer sees them: times ``train.weight_schedule``'s factor of this epoch."""
        return self.schedule.scale(losses, self.epoch - 1) if self.schedule is not None else losses

    def _add_regularizer(self, grad_scale: Tensor | None) -> None:
        """Add the gradient of the model's penalty (soft sharing's ``R``; not a task, so not the balancer's) to
        ``.grad``, after the balancer's step; scaled like the losses under fp16."""
        regularizer = getattr(self.model, "regularizer", lambda: None)()
        if regularizer is None:
            return
        (regularizer if grad_scale is None else regularizer * grad_scale).backward()
        self._regularized = True
        self._regularizer_sum += regularizer.detach()

    def _losses(self, preds: dict[str, Tensor], batch) -> dict[str, Tensor]:
        if self.sync is not None:  # values of the global batch, gradients of this shard
            return sharded_losses(self.tasks, preds, batch, self.scalers, self.sync)
        return task_losses(self.tasks, preds, batch, self.scalers)

    def _losses_after_step(self, batch) -> dict[str, Tensor]:
        with self._autocast():
            return losses_after_step(self.model, batch, self._losses)

    def _autocast(self):
        return amp_context(self._amp, self.device)

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict(self, loader) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
        """Labels and de-standardised predictions of every task over ``loader``, and the mean loss."""
        self.model.eval()
        if self.sync is not None:
            self.sync.broadcast_buffers(self.model)  # rank 0's running statistics everywhere
        with compiled_scope(self.cfg.compile):
            true, pred, loss_total, loss_batches = collect_predictions(self.model, self.scalers, loader, self.device,
                                                                       self._autocast)
        if self.sync is not None:  # every shard's predictions, the same on every process
            true, pred, loss_total, loss_batches = gather_predictions(self.sync, true, pred, loss_total,
                                                                      loss_batches)
        return true, pred, loss_total / max(loss_batches, 1)

    def evaluate(self, loader) -> dict[str, Any]:
        """Per-task metrics, their mean, the skipped tasks, the trivial baseline and the gain over it."""
        true, pred, loss = self.predict(loader)
        baselines = {t.name: trivial_baseline(t, self.train_labels[t.name]) for t in self.tasks}
        return score_predictions(self.tasks, true, pred, loss, baselines, self.summary)

    def monitor_score(self, valid: dict[str, Any]) -> float:
        """The model-selection score of a validation result (larger is better)."""
        monitor = self.cfg.monitor
        if monitor == "gain":
            return valid["gain"]
        if monitor == "loss":
            return -valid["loss"]
        task = next(t for t in self.tasks if t.name == monitor)  # checked in __init__
        value = valid["per_task"][monitor]
        if value is None:
            return -math.inf
        return value if task.maximise else -value

    def test(self, loaders: dict[str, Any], checkpoint: str | Path | None = None) -> dict[str, Any]:
        """Evaluate the best checkpoint (or, with no run folder, the current evaluated weights) on each loader."""
        path = checkpoint or (self.out_dir / "best.pt" if self.out_dir is not None else None)
        reads = self.sync is None or self.sync.is_main  # rank 0 wrote best.pt: the others need no shared disk
        if reads and path is not None and Path(path).is_file():
            state = load_checkpoint(path, self.device)
            self.model.load_state_dict(state["model"])
        if self.sync is not None:
            self.sync.broadcast_module(self.model)
        with self.evaluated_weights() if path is None else nullcontext():  # a checkpoint holds evaluated weights
            return {name: self.evaluate(loader) for name, loader in loaders.items()}

    def evaluated_weights(self):
        """A context in which the model holds the weights that are evaluated and saved: the moving average under
        ``train.ema_decay``, else its own."""
        return self.average.swapped_in(self.model) if self.average is not None else nullcontext()

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        # "model" is what is evaluated (test, predict, init_from read it); under weight averaging the training
        # weights go beside it, for resuming
        averaged = self.average is not None
        return {
            "model": self.average.average if averaged else self.model.state_dict(),
            **({"training_model": self.model.state_dict(), "average_updates": self.average.updates}
               if averaged else {}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "balancer": self.engine.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "scalers": self.scalers,
            "history": self.history,
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "rng": rng_state(),
            "metadata": self.metadata,
        }

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by this trainer, to continue exactly where it stopped; a checkpoint of
        another model, dataset or balancer is a one-line :class:`CheckpointError` (nothing is changed)."""
        state = load_checkpoint(path, self.device)
        check_same_model(state["model"], self.model.state_dict(), path)
        try:
            if self.average is not None:
                self.model.load_state_dict(state["training_model"])
                self.average.load_state_dict({"updates": state["average_updates"], "average": state["model"]})
            else:
                self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.engine.load_state_dict(state["balancer"])
            if state.get("grad_scaler"):
                self.grad_scaler.load_state_dict(state["grad_scaler"])
            if self.monitor is not None and state.get("monitor") is not None:
                self.monitor.load_state_dict(state["monitor"])
            for key in ("epoch", "step", "best_score", "best_epoch", "bad_epochs", "scalers", "history"):
                setattr(self, key, state[key])
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as error:
            what = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"--resume: {str(path)!r} does not match this run's config ({what}); resume "
                                  "with the config the run was started with (its config.yaml)") from None

    def _step_scheduler(self, score: float) -> None:
        step_scheduler(self.scheduler, score)

    def _write_epoch(self, record: dict[str, Any], improved: bool) -> None:
        if not self.writes:
            return
        state = self.state_dict()
        if improved:  # best.pt first: killed in between, last.pt still names the previous best, so the resumed
            # run redoes this epoch and writes both again (never a last.pt whose best epoch best.pt does not hold)
            atomic_save(state, self.out_dir / "best.pt")
        atomic_save(state, self.out_dir / "last.pt")
        self.write_metrics()

    def write_metrics(self) -> None:
        """Write ``metrics.csv``, one row per epoch of :attr:`history` (a resumed run rewrites it from its
        checkpoint's history, whatever a killed run left)."""
        if not self.writes or not self.history:
            return
        keys = list(self.history[0])
        text = io.StringIO()  # csv quoting: a task name may hold a comma or a quote
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(keys)
        writer.writerows([_fmt(row.get(k)) for k in keys] for row in self.history)
        atomic_write_text(text.getvalue(), self.out_dir / "metrics.csv")

    def _write_steps(self, rows: list, names: list[str]) -> None:
        """Append every step's task losses and balancer weights to ``steps.csv``."""
        if not self.writes or not rows:
            return
        path = self.out_dir / "steps.csv"
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if not path.exists():
            writer.writerow(["epoch", "step", *[f"loss/{n}" for n in names], *[f"weight/{n}" for n in names]])
        for epoch, step, values, present, weights in rows:
            losses = [f"{v:.6g}" if p else "" for v, p in zip(values.tolist(), present.tolist())]
            writer.writerow([epoch, step, *losses, *[f"{w:.6g}" for w in weights.tolist()]])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:  # one write: a kill leaves at most one partial row, cut on resume
            handle.write(text.getvalue())


def check_sharing(model: nn.Module, engine: StepEngine, balancer: str, shared: list[nn.Parameter],
                  monitored: bool = False) -> None:
    """A one-line error where the balancer or the conflict monitor takes per-task gradients at shared parameters
    that the architecture does not have (``model.arch: soft``)."""
    if shared:
        return
    arch = getattr(model, "arch", "hard")
    if monitored:
        raise ValueError(f"train.monitor_every: model.arch {arch} shares no parameters, so there are no gradient "
                         "conflicts to monitor; leave it unset (null)")
    if engine.takes_task_gradients:
        raise ValueError(f"model.arch: {arch} shares no parameters, so train.balancer {balancer!r} has nothing to "
                         "balance; use a loss weighting such as ew, uw, dwa or model.arch: hard")


def check_monitor(monitor: str, tasks: list[Task]) -> None:
    """``train.monitor`` must be ``gain``, ``loss`` or the name of one of ``tasks``."""
    names = [t.name for t in tasks]
    if monitor not in ("gain", "loss", *names):
        raise ValueError(f"train.monitor: {monitor!r} is neither gain, loss nor a task of this dataset; "
                         f"choose gain, loss or one of {names}")


def check_same_model(saved: dict[str, Tensor], current: dict[str, Tensor], path: str | Path) -> None:
    """A checkpoint's weights must be those of the model built from this config: same names and shapes."""
    missing = [k for k in current if k not in saved]
    extra = [k for k in saved if k not in current]
    shapes = [k for k in current if k in saved and tuple(saved[k].shape) != tuple(current[k].shape)]
    if missing or extra or shapes:
        if shapes:
            k = shapes[0]
            example = f"{k!r} is {tuple(saved[k].shape)} there, {tuple(current[k].shape)} here"
        else:
            example = f"e.g. {(missing or extra)[0]!r} is {'missing' if missing else 'unexpected'}"
        raise CheckpointError(f"--resume: {str(path)!r} holds another model ({len(missing)} weights missing, "
                              f"{len(extra)} unexpected, {len(shapes)} of another shape; {example}); resume with "
                              "the config the run was started with (its config.yaml)")


@torch.no_grad()
def losses_after_step(model: nn.Module, batch, losses: Callable[[dict[str, Tensor], Any], dict[str, Tensor]]
                      ) -> dict[str, Tensor]:
    """``losses(preds, batch)`` of ``batch`` evaluated again with the updated weights, in training mode; the
    buffers (batch-norm running statistics) are restored, so this extra forward (FAMO's) changes nothing but
    the method's state."""
    saved = [b.detach().clone() for b in model.buffers()]
    values = losses(model(batch).preds, batch)
    for buffer, value in zip(model.buffers(), saved):
        buffer.copy_(value)
    return values


def to_device(batch, device: torch.device):
    """``batch`` on ``device``; to CUDA without blocking the host (``non_blocking``): a batch the loader pinned
    (``run.pins_memory``) is copied while the host goes on, an unpinned one is copied as a blocking copy would."""
    return batch.to(device, non_blocking=device.type == "cuda")


def amp_context(amp: str, device: torch.device):
    """The autocast context of ``train.amp`` (``none``: no autocast) on ``device``."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def compile_encoder(model: MultiTaskGNN) -> None:
    """``train.compile``: the shared encoder compiled in place, ``torch.compile(dynamic=True)`` (every graph batch
    has its own number of nodes and edges; PyG's message passing compiles with dynamic shapes). In place
    (``Module.compile``), so the state dict keeps the eager model's keys: checkpoints, resume and predict are
    those of an eager run."""
    model.encoder.compile(dynamic=True)


@contextmanager
def compiled_scope(compiled: bool) -> Iterator[None]:
    """Around every step and evaluation under ``train.compile`` (``compiled``; nothing otherwise): the compiled
    backward keeps its buffers (the step engine's per-task backward passes retain the graph, which donated
    buffers refuse), and a failure of ``torch.compile`` on this platform (no C++ compiler, an unsupported
    backend) is a one-line error naming the key."""
    if not compiled:
        yield
        return
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._functorch import config as functorch_config
    from torch._inductor.exc import InductorError

    try:
        with functorch_config.patch(donated_buffer=False):
            yield
    except (BackendCompilerFailed, InductorError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0][:160] if lines else type(error).__name__
        raise RuntimeError(f"train.compile: torch.compile failed on this platform ({reason}); set "
                           "train.compile: false to train eagerly") from None


@torch.no_grad()
def collect_predictions(model: MultiTaskGNN, scalers: Scalers, loader, device: torch.device,
                        autocast: Callable[[], Any] = nullcontext) -> tuple[dict[str, np.ndarray],
                                                                            dict[str, np.ndarray], float, int]:
    """Every task's labels and de-standardised predictions over ``loader`` (node tasks restricted to each batch's
    ``node_mask``), the summed per-batch mean loss and the number of batches with a loss; ``model`` in eval
    mode, ``autocast()`` around its forward pass."""
    tasks = model.tasks
    y_true: dict[str, list[Tensor]] = {t.name: [] for t in tasks}
    y_pred: dict[str, list[Tensor]] = {t.name: [] for t in tasks}
    loss_total, loss_batches = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast():
            out = model(batch)
        losses = task_losses(tasks, out.preds, batch, scalers)
        if losses:
            loss_total += float(torch.stack(list(losses.values())).mean())
            loss_batches += 1
        node_mask = getattr(batch, "node_mask", None)
        for task in tasks:
            pred = out.preds[task.name].float()
            if task.name in scalers:
                mean, std = scalers[task.name]
                pred = pred * std.to(pred.device) + mean.to(pred.device)
            y = task.labels(batch)
            if task.level == "node" and node_mask is not None:
                pred, y = pred[node_mask], y[node_mask]
            y_true[task.name].append(y.cpu())
            y_pred[task.name].append(pred.cpu())
    # a process whose shard of the split is empty contributes empty arrays of the right widths
    true = {t.name: torch.cat(y_true[t.name]).numpy() if y_true[t.name] else
            np.zeros((0, 1 if t.kind == "multiclass" else t.num_outputs), dtype=np.float32) for t in tasks}
    pred = {t.name: torch.cat(y_pred[t.name]).numpy() if y_pred[t.name] else
            np.zeros((0, t.num_outputs), dtype=np.float32) for t in tasks}
    return true, pred, loss_total, loss_batches


def score_predictions(tasks: list[Task], true: dict[str, np.ndarray], pred: dict[str, np.ndarray],
                      loss: float | None, baselines: dict[str, np.ndarray],
                      summary: Callable[[dict, dict], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The evaluation record of ``results.json``: per-task metrics (:func:`evaluate_tasks`), the trivial
    baseline's (its constant ``baselines`` row per task), the relative gain over it, ``loss`` and ``summary``."""
    result = evaluate_tasks(tasks, true, pred)
    base_pred = {t.name: np.tile(baselines[t.name], (len(true[t.name]), 1)) for t in tasks}
    baseline = evaluate_tasks(tasks, true, base_pred)
    result["baseline"] = baseline["per_task"]
    result["loss"] = loss
    result["gain"] = relative_gain(tasks, result["per_task"], baseline["per_task"])
    result["summary"] = summary(true, pred) if summary is not None else {}
    return result


def relative_gain(tasks: list[Task], values: dict[str, float | None], baseline: dict[str, float | None]) -> float:
    r"""Mean over scored tasks of the relative gain over the baseline, :math:`\pm (v - b) / \max(|b|, 10^{-8})`."""
    gains = []
    for task in tasks:
        v, b = values.get(task.name), baseline.get(task.name)
        if v is None or b is None:
            continue
        diff = v - b if task.maximise else b - v
        gains.append(diff / max(abs(b), 1e-8))
    return float(np.mean(gains)) if gains else -math.inf


def _reseed_loader(loader, seed: int) -> None:
    """Make each epoch's shuffle a function of (seed, epoch) so that a resumed run sees the same batches."""
    generator = getattr(loader, "generator", None) or getattr(getattr(loader, "batch_sampler", None), "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_json(obj: Any, path: str | Path) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
