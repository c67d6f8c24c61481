#!/usr/bin/env python
"""Train or evaluate an ovdet LazyConfig (``configs/lazy/*.py``), the way Detectron2's
``tools/lazyconfig_train_net.py`` runs ViTDet configs: ``instantiate`` the config's ``model``,
``optimizer``, ``dataloader`` and ``lr_multiplier``, then a ``SimpleTrainer`` (``AMPTrainer``
with ``train.amp.enabled``) with Detectron2's hooks.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/fvlm_RN50_FPN.py --num-gpus 8 \\
        'ovd.opts=["MODEL.OVD.CLIP.PRETRAINED","/path/RN50.pt"]' train.output_dir=output/fvlm
    python tools/lazyconfig_train_net.py --config-file configs/lazy/fvlm_RN50_FPN.py --eval-only \\
        train.init_checkpoint=output/fvlm/model_final.pth

Overrides are Detectron2's ``key=value`` LazyConfig overrides. ``tools/train_net.py`` (YAML) adds
what this pattern has no place for: exact resume of the data order, atomic keep-last-N
checkpoints and the input checks; use it for long runs.
"""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import ovdet_plugin  # noqa: F401  (registers the plugin's components)
from ovdet_plugin.engine import launch_main

logger = logging.getLogger("ovdet.lazyconfig_train_net")


def do_test(cfg, model):
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def do_train(args, cfg):
    """Detectron2's lazy training loop: trainer, checkpointer, LR schedule, eval and writers."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)
    return None


if __name__ == "__main__":
    launch_main(main, default_argument_parser().parse_args())
