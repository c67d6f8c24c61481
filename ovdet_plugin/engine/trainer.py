"""``OVDTrainer``: Detectron2's ``DefaultTrainer`` with three hooks filled in, usable from any
Detectron2 project (``tools/train_net.py`` is a thin wrapper around it):

- evaluators chosen from the dataset's ``evaluator_type`` (LVIS -> stock ``LVISEvaluator``
  with APr/APc/APf; OV-COCO -> AP50 novel/base/all), see ``ovdet_plugin.evaluation``;
- the train loader's mapper (``OVDDatasetMapper``) adds the papers' large-scale jitter
  (``MODEL.OVD.INPUT.LSJ_SIZE``) and ViLD's precomputed distillation proposals
  (``MODEL.OVD.VILD.EMBEDDINGS_DIR``); with neither it is Detectron2's ``DatasetMapper``;
- the optimizer (``MODEL.OVD.SOLVER``): SGD or AdamW, learnable temperatures excluded from weight
  decay (F-VLM, METHODS 2.2), layer-wise lr decay for a fine-tuned CLIP ViT backbone
  (``MODEL.OVD.BACKBONE.LR_DECAY_RATE``, RO-ViT / ViTDet), Detectron2's gradient clipping.

It also makes runs safe to kill and resume, and checks its inputs first:

- checkpoints are written atomically (``AtomicCheckpointer``), the newest
  ``MODEL.OVD.CHECKPOINT.MAX_TO_KEEP`` are kept, leftovers of a killed save are removed;
- every step is seeded from (``SEED``, iteration, rank) and, with Detectron2's
  ``TrainingSampler``, the loader restarts at the resumed sample, so a resumed run retraces an
  uninterrupted one (exactly with ``DATALOADER.NUM_WORKERS 0`` and batches that aspect-ratio
  grouping does not reorder);
- the device, ``OUTPUT_DIR``, and the vocabularies against the datasets' classes are checked
  before training or inference starts (``ovdet_plugin.engine.checks``).
"""

import json
import os
from functools import partial

import torch
from detectron2.data import build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer, default_setup, launch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import get_ovdet_cfg
from ..data.datasets.custom import merge_dataset_arguments, register_datasets_from_config
from ..data.vild_embeddings import OVDDatasetMapper
from ..evaluation import build_ov_evaluator
from ..modeling.backbone.utils import get_vit_lr_decay_rate
from ..pretraining.trainer import InfiniteShardedSampler, get_seed, step_seed
from ..utils.atomic_io import atomic_write_path
from ..utils.checkpoint import AtomicCheckpointer
from .checks import check_device, check_vocabulary_matches_dataset, check_writable_dir

__all__ = [
    "EVAL_RESULTS_FILE",
    "OVDTrainer",
    "build_ovdet_optimizer",
    "check_ovdet_cfg",
    "launch_main",
    "setup_ovdet_cfg",
]

# Written by OVDTrainer.test under OUTPUT_DIR: {dataset: {task: {metric: value}}} (or, for a single
# test dataset, Detectron2's {task: {metric: value}}).
EVAL_RESULTS_FILE = "eval_results.json"

# Parameters never weight-decayed: the learnable temperatures (F-VLM excludes t, METHODS 2.2).
_NO_DECAY = {"inverse_temperature": {"weight_decay": 0.0}, "logit_scale": {"weight_decay": 0.0}}


def _vit_depth(model: torch.nn.Module) -> int:
    for module in model.modules():
        resblocks = getattr(getattr(module, "transformer", None), "resblocks", None)
        if resblocks is not None and hasattr(module, "conv1"):
            return len(resblocks)
    return 0


def build_ovdet_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum ``SOLVER.MOMENTUM``) or AdamW (``MODEL.OVD.SOLVER.OPTIMIZER``) over the
    trainable parameters, with Detectron2's per-group settings and gradient clipping."""
    lr_factor_func = None
    rate = cfg.MODEL.OVD.BACKBONE.LR_DECAY_RATE
    depth = _vit_depth(model)
    if rate != 1.0 and depth:
        lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=rate, num_layers=depth)
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=lr_factor_func,
        overrides=_NO_DECAY,
    )
    name = cfg.MODEL.OVD.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        opt_class = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name == "ADAMW":
        opt_class = torch.optim.AdamW
        kwargs = {"betas": tuple(cfg.MODEL.OVD.SOLVER.BETAS)}
    else:
        raise ValueError(f"MODEL.OVD.SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {name!r}")
    return maybe_add_gradient_clipping(cfg, opt_class)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs
    )


def check_ovdet_cfg(cfg) -> None:
    """The checks that need no data or model: ``MODEL.DEVICE`` exists here and ``OUTPUT_DIR``
    is writable (created if needed). Raise with the fix."""
    check_device(cfg.MODEL.DEVICE)
    check_writable_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")


class OVDTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the plugin's evaluator, train mapper and optimizer, atomic
    keep-last-N checkpoints, per-step seeding and checks of its inputs (see the module doc)."""

    def __init__(self, cfg):
        check_ovdet_cfg(cfg)
        super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # the test loader was built first, so the dataset's metadata is known: check before
        # inference that the test vocabulary names the dataset's classes in its order
        test_spec = cfg.MODEL.OVD.TEST_VOCABULARY or cfg.MODEL.OVD.TRAIN_VOCABULARY
        option = (
            "MODEL.OVD.TEST_VOCABULARY"
            if cfg.MODEL.OVD.TEST_VOCABULARY
            else ("MODEL.OVD.TRAIN_VOCABULARY (MODEL.OVD.TEST_VOCABULARY is empty)")
        )
        check_vocabulary_matches_dataset(test_spec, dataset_name, option)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_ov_evaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation, plus ``OUTPUT_DIR/eval_results.json`` (the returned metrics,
        written atomically by the main process) for scripts that collect results."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, EVAL_RESULTS_FILE)
            with atomic_write_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader with ``OVDDatasetMapper``, after checking that
        ``MODEL.OVD.TRAIN_VOCABULARY`` names every training dataset's classes in order. Detectron2's
        ``TrainingSampler`` is replaced by the equivalent ``InfiniteShardedSampler`` (seeded by
        ``SEED``), whose start the trainer sets on resume; it is the loader's ``ovdet_sampler``."""
        kwargs = _train_loader_from_config(cfg, mapper=OVDDatasetMapper(cfg, is_train=True))
        for name in cfg.DATASETS.TRAIN:
            check_vocabulary_matches_dataset(
                cfg.MODEL.OVD.TRAIN_VOCABULARY, name, "MODEL.OVD.TRAIN_VOCABULARY"
            )
        sampler = None
        if type(kwargs["sampler"]) is TrainingSampler:
            sampler = InfiniteShardedSampler(len(kwargs["dataset"]), seed=get_seed(cfg))
            kwargs["sampler"] = sampler
        # its own generator: the DataLoader then draws nothing from the global RNG (which would
        # shift the first resumed step's random choices)
        loader = build_detection_train_loader(**kwargs, seed=get_seed(cfg))
        loader.ovdet_sampler = sampler
        return loader

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_ovdet_optimizer(cfg, model)

    def build_hooks(self):
        # before Detectron2's PeriodicCheckpointer hook takes it: the atomic, keep-last-N one
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            max_to_keep=self.cfg.MODEL.OVD.CHECKPOINT.MAX_TO_KEEP,
            **self.checkpointer.checkpointables,
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        """Detectron2's resume, then the train sampler skips the samples of the finished
        iterations (``start_iter`` × images per rank)."""
        super().resume_or_load(resume=resume)
        sampler = getattr(self._trainer.data_loader, "ovdet_sampler", None)
        if sampler is not None:
            sampler.start = self.start_iter * (
                self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            )

    def run_step(self):
        self._trainer.iter = self.iter
        # create the loader iterator first (DataLoader.__iter__ draws a seed from the global RNG),
        # then seed the step: augmentation, proposal sampling, ... depend only on the iteration
        self._trainer._data_loader_iter
        seed_all_rng(step_seed(get_seed(self.cfg), self.iter, comm.get_rank()) % 2**31)
        self._trainer.run_step()


def setup_ovdet_cfg(args):
    """``get_cfg`` + ``add_ovdet_config`` + the config file + command-line overrides (and the
    ``--register-dataset`` specs, appended to ``MODEL.OVD.CUSTOM_DATASETS``), then
    :func:`check_ovdet_cfg`, Detectron2's ``default_setup`` (logging, output folder, seed), then
    the registration of those datasets. Every tool calls it inside each ``launch`` worker, so
    the registrations exist in every process. Returns the frozen config."""
    cfg = merge_dataset_arguments(get_ovdet_cfg(args.config_file, args.opts), args)
    cfg.freeze()
    check_ovdet_cfg(cfg)  # before default_setup writes into OUTPUT_DIR
    default_setup(cfg, args)
    # the plugin's own INFO lines (CLIP weights loaded, datasets registered) on the console and
    # in OUTPUT_DIR/log.txt, like Detectron2's (default_setup sets up "detectron2" and "fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ovdet_plugin")
    register_datasets_from_config(cfg)
    return cfg


def launch_main(main, args) -> None:
    """Run ``main(args)`` through Detectron2's ``launch`` with the parsed ``--num-gpus``,
    ``--num-machines``, ``--machine-rank`` and ``--dist-url`` (DDP; gloo without a GPU)."""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
