#!/usr/bin/env python
"""Train or evaluate an ovdet detector with Detectron2's DefaultTrainer (``OVDTrainer``), on one
or many GPUs/machines through Detectron2's ``launch``.

    python tools/train_net.py --config-file configs/lvis/fvlm_RN50_FPN.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/lvis/fvlm_RN50_FPN.yaml --eval-only \
        MODEL.WEIGHTS output/fvlm_RN50_FPN/model_final.pth MODEL.OVD.TEST_VOCABULARY lvis

Your own data: --register-dataset "name=my_train,format=coco,json=...,images=...,novel=a;b"
(repeatable; or MODEL.OVD.CUSTOM_DATASETS in the YAML, see configs/custom/), registered in every
process.
"""

from detectron2.engine import default_argument_parser

import ovdet_plugin  # noqa: F401  (registers the plugin)
from ovdet_plugin.data.datasets import add_dataset_arguments
from ovdet_plugin.engine import OVDTrainer, launch_main, setup_ovdet_cfg
from ovdet_plugin.engine.checks import check_vocabularies_match_datasets
from ovdet_plugin.utils.checkpoint import AtomicCheckpointer


def main(args):
    cfg = setup_ovdet_cfg(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise SystemExit(
                "--eval-only needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth "
                "(or --resume to evaluate OUTPUT_DIR's last checkpoint)."
            )
        check_vocabularies_match_datasets(cfg, train=False)  # before the model is built
        model = OVDTrainer.build_model(cfg)
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        resumed = args.resume and checkpointer.has_checkpoint()
        # a checkpoint of another model would leave random layers: refuse to evaluate those
        checkpointer.require_complete_load(
            checkpointer.get_checkpoint_file() if resumed else cfg.MODEL.WEIGHTS
        )
        return OVDTrainer.test(cfg, model)
    trainer = OVDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = add_dataset_arguments(default_argument_parser()).parse_args()
    launch_main(main, args)
