"""The training loop shared by RO-ViT pretraining and CLIPSelf self-distillation.

Detectron2's ``SimpleTrainer`` with its hooks (``IterationTimer``, ``LRScheduler``,
``PeriodicCheckpointer``, ``PeriodicWriter`` with ``CommonMetricPrinter`` + ``JSONWriter`` +
``TensorboardXWriter`` when tensorboard is importable), ``create_ddp_model`` for DDP (gloo on
CPU), and an ``AtomicCheckpointer`` (``ovdet_plugin.utils.checkpoint``) that writes atomically,
keeps the newest ``MODEL.OVD.CHECKPOINT.MAX_TO_KEEP`` checkpoints and saves model, optimizer,
scheduler and iteration, so that ``--resume`` continues where a killed run stopped.

Reproducibility: the model is built under ``SEED``; before every step the global torch RNG is
seeded from (seed, iteration, rank), so every random choice made inside the step (CPE boxes,
CLIPSelf grids) depends only on the iteration; the data loaders start at the batch offset of the
resumed iteration. A resumed run therefore retraces an uninterrupted one.
"""

import logging
import os
from typing import Callable, Dict, Iterator, List, Optional

import torch
from detectron2.engine import SimpleTrainer, create_ddp_model, hooks
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, get_event_storage
from torch import nn
from torch.utils.data import Sampler

from ..utils.checkpoint import AtomicCheckpointer
from .optimizer import build_ovdet_optimizer, clip_param_groups

__all__ = [
    "AtomicCheckpointer",
    "InfiniteShardedSampler",
    "PretrainTrainer",
    "get_seed",
    "run_training",
    "step_seed",
]

logger = logging.getLogger(__name__)


def get_seed(cfg) -> int:
    """``cfg.SEED``, or 0 when it is negative (runs must be reproducible to resume exactly)."""
    return int(cfg.SEED) if cfg.SEED >= 0 else 0


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """The RNG seed of one step on one rank (distinct per rank and iteration)."""
    return (seed * 1_000_003 + iteration * 1009 + rank) % (2**63 - 1)


class InfiniteShardedSampler(Sampler):
    """Endless indices for one rank: epoch e is ``randperm(size, seed + e)`` (or ``range``), and
    rank r takes positions ``r, r + W, ...``; ``start`` skips that many of this rank's indices in
    O(1) (resume)."""

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        if size <= 0:
            raise ValueError("The training set is empty: no image to sample.")
        self.size = int(size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.start = int(start)
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world = comm.get_world_size() if world_size is None else int(world_size)

    def _epoch(self, e: int) -> List[int]:
        if not self.shuffle:
            order = list(range(self.size))
        else:
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed + e)
            )
            order = order.tolist()
        # pad to a multiple of the world size so every rank gets as many indices
        order = order + order[: (-len(order)) % self.world]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        per_epoch = -(-self.size // self.world)
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            yield from self._epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0


class PretrainTrainer(SimpleTrainer):
    """``SimpleTrainer`` that seeds the RNG per step, clips gradients (optional) and logs the
    number of skipped unreadable images reported by the data loader (``batch["num_skipped"]``)."""

    def __init__(self, model, data_loader, optimizer, *, seed: int = 0, clip_grad_norm: float = 0):
        super().__init__(model, data_loader, optimizer)
        self.seed = int(seed)
        self.clip_grad_norm = float(clip_grad_norm)
        self._skipped: Dict[int, int] = {}

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = self._counting(iter(self.data_loader))
        return self._data_loader_iter_obj

    def _counting(self, it):
        for batch in it:
            if isinstance(batch, dict) and "num_skipped" in batch:
                self._skipped.update(batch.pop("num_skipped"))
            yield batch

    def run_step(self):
        # create the loader iterator first: DataLoader.__iter__ draws a base seed from the global
        # RNG, which would otherwise shift the random choices of the first step of every run
        self._data_loader_iter
        torch.manual_seed(step_seed(self.seed, self.iter, comm.get_rank()))
        super().run_step()
        if self._skipped:
            get_event_storage().put_scalar(
                "data/skipped_images", float(sum(self._skipped.values())), smoothing_hint=False
            )

    def after_backward(self):
        super().after_backward()
        if self.clip_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)


class _PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's hook, but "final" means SOLVER.MAX_ITER, not the end of this process's run:
    a run stopped early (``stop_after``) leaves only the periodic checkpoints, like a kill."""

    def before_train(self):
        pass


def _writers(cfg) -> list:
    writers = [
        CommonMetricPrinter(cfg.SOLVER.MAX_ITER),
        JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")),
    ]
    try:
        import torch.utils.tensorboard  # noqa: F401
        from detectron2.utils.events import TensorboardXWriter

        writers.append(TensorboardXWriter(cfg.OUTPUT_DIR))
    except ImportError:
        logger.info("tensorboard is not installed: logging to the console and metrics.json only.")
    return writers


def run_training(
    cfg,
    model: nn.Module,
    build_data_loader: Callable[[int], object],
    *,
    resume: bool = False,
    stop_after: int = 0,
    extra_hooks: Optional[Callable[[nn.Module, AtomicCheckpointer], list]] = None,
) -> nn.Module:
    """Train ``model`` (returns its loss dict from a batch) with the shared loop.

    Args:
        cfg: the full config (SOLVER.*, OUTPUT_DIR, SEED, MODEL.OVD.SOLVER.BETAS,
            MODEL.OVD.PRETRAIN.*).
        model: the unwrapped model, already on its device, built under the seed.
        build_data_loader: ``start_iter -> iterable of batches`` for this rank, starting at the
            batch an uninterrupted run would take at ``start_iter``.
        resume: continue from OUTPUT_DIR/last_checkpoint when it exists (``--resume``).
        stop_after: stop after this many iterations in total as if killed (no final save);
            0 = train to SOLVER.MAX_ITER. For resume tests.
        extra_hooks: ``(model, checkpointer) -> hooks`` inserted before the writer.
    Returns:
        the trained (unwrapped) model.
    """
    seed = get_seed(cfg)
    on_gpu = any(p.is_cuda for p in model.parameters())
    if not on_gpu and comm.get_local_size() > 1:
        # CPU processes sharing a machine: split the cores, or OpenMP threads oversubscribe them
        # (measured: 40x slower steps with 2 processes x 2 threads on 2 cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    # a CPU module (gloo) must not get device_ids (Detectron2 passes the local rank by default)
    ddp_kwargs = {} if on_gpu else {"device_ids": None}
    ddp_model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
    # AdamW over open_clip's two groups, whatever MODEL.OVD.SOLVER.OPTIMIZER says (methods §3.7)
    optimizer = build_ovdet_optimizer(
        cfg, model, optimizer="AdamW", param_groups=clip_param_groups(cfg, model)
    )
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = PretrainTrainer(
        ddp_model,
        None,
        optimizer,
        seed=seed,
        clip_grad_norm=cfg.MODEL.OVD.PRETRAIN.CLIP_GRAD_NORM,
    )
    checkpointer = AtomicCheckpointer(
        model,
        cfg.OUTPUT_DIR,
        max_to_keep=cfg.MODEL.OVD.CHECKPOINT.MAX_TO_KEEP,
        trainer=trainer,
        optimizer=optimizer,
    )
    hook_list = [hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler)]
    if comm.is_main_process():
        hook_list.append(
            _PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)
        )
    if extra_hooks is not None:
        hook_list.extend(extra_hooks(model, checkpointer))
    if comm.is_main_process():
        hook_list.append(
            hooks.PeriodicWriter(_writers(cfg), period=cfg.MODEL.OVD.PRETRAIN.LOG_PERIOD)
        )
    trainer.register_hooks(hook_list)

    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.data_loader = build_data_loader(start_iter)
    end = cfg.SOLVER.MAX_ITER if stop_after <= 0 else min(int(stop_after), cfg.SOLVER.MAX_ITER)
    if start_iter >= end:
        logger.info("Nothing to train: the checkpoint is at iteration %d of %d.", start_iter, end)
        return model
    logger.info(
        "Training iterations %d..%d (of SOLVER.MAX_ITER %d).",
        start_iter,
        end - 1,
        cfg.SOLVER.MAX_ITER,
    )
    trainer.train(start_iter, end)
    return model
