"""``OVDTrainer``: Detectron2's ``DefaultTrainer`` with three hooks filled in, usable from any
Detectron2 project (``tools/train_net.py`` is a thin wrapper around it):

- evaluators chosen from the dataset's ``evaluator_type`` (LVIS -> stock ``LVISEvaluator``
  with APr/APc/APf; OV-COCO -> AP50 novel/base/all), see ``ovdet_plugin.evaluation``;
- the train loader's mapper (``OVDDatasetMapper``) adds the papers' large-scale jitter
  (``MODEL.OVD.INPUT.LSJ_SIZE``) and ViLD's precomputed distillation proposals
  (``MODEL.OVD.VILD.EMBEDDINGS_DIR``); with neither it is Detectron2's ``DatasetMapper``;
- the optimizer (``MODEL.OVD.SOLVER``): SGD or AdamW, learnable temperatures excluded from weight
  decay (F-VLM, methods §2.2), layer-wise lr decay for a fine-tuned CLIP ViT backbone
  (``MODEL.OVD.BACKBONE.LR_DECAY_RATE``, RO-ViT / ViTDet), Detectron2's gradient clipping.

It also makes runs safe to kill and resume, and checks its inputs first:

- checkpoints are written atomically (``AtomicCheckpointer``), the newest
  ``MODEL.OVD.CHECKPOINT.MAX_TO_KEEP`` are kept, leftovers of a killed save are removed;
- every step is seeded from (``SEED``, iteration, rank) and, with Detectron2's
  ``TrainingSampler``, the loader restarts at the resumed sample, so a resumed run retraces an
  uninterrupted one (exactly with ``DATALOADER.NUM_WORKERS 0`` and batches that aspect-ratio
  grouping does not reorder);
- the device, ``OUTPUT_DIR``, and the vocabularies against the datasets' classes are checked
  before the model is built (``ovdet_plugin.engine.checks``).
"""

import json
import logging
import os

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset_mapper import OVDDatasetMapper
from ..evaluation import build_ov_evaluator
from ..utils.atomic_io import atomic_write_path
from ..utils.checkpoint import AtomicCheckpointer
from .checks import (
    check_vocabularies_match_datasets,
    check_vocabulary_matches_dataset,
    evaluation_vocabulary,
)
from .optimizer import build_ovdet_optimizer
from .setup import check_ovdet_cfg
from .train_loop import InfiniteShardedSampler, get_seed, step_seed

__all__ = ["DETECTOR_ONLY_DIR", "EVAL_RESULTS_FILE", "OVDTrainer"]

# Written by OVDTrainer.test under OUTPUT_DIR: {dataset: {task: {metric: value}}} (or, for a single
# test dataset, Detectron2's {task: {metric: value}}).
EVAL_RESULTS_FILE = "eval_results.json"
# The folder under OUTPUT_DIR of MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY's evaluation.
DETECTOR_ONLY_DIR = "detector_only"


def _write_eval_results(output_dir: str, results) -> None:
    """``output_dir/eval_results.json``, written atomically by the main process."""
    if comm.is_main_process() and results:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, EVAL_RESULTS_FILE)
        with atomic_write_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


class OVDTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the plugin's evaluator, train mapper and optimizer, atomic
    keep-last-N checkpoints, per-step seeding and checks of its inputs (see the module doc)."""

    def __init__(self, cfg):
        check_ovdet_cfg(cfg)
        # before DefaultTrainer builds the model (and CLIP): the vocabularies against the
        # registered datasets' classes, the test one too (evaluated after training)
        check_vocabularies_match_datasets(cfg)
        super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # checked before the model was built when the metadata was registered; again here, as
        # the test loader was built first, for a dataset whose classes are known only once loaded
        test_spec, option = evaluation_vocabulary(cfg)
        check_vocabulary_matches_dataset(test_spec, dataset_name, option)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_ov_evaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation, plus ``OUTPUT_DIR/eval_results.json`` (the returned metrics,
        written atomically by the main process) for scripts that collect results. With
        ``MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY`` (and the default evaluators: ``evaluators``
        None), the same model is evaluated again with the fusion off and boxes only, into
        ``OUTPUT_DIR/detector_only`` (not in the returned metrics)."""
        results = super().test(cfg, model, evaluators)
        _write_eval_results(cfg.OUTPUT_DIR, results)
        if cfg.MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY and evaluators is None:
            cls.test_detector_only(cfg, model)
        return results

    @classmethod
    def test_detector_only(cls, cfg, model):
        """Evaluate ``model`` with its fusion switched off (the detector's own scores; F-VLM's
        "detector only" ablation) and without the mask head, with the evaluators of
        ``OUTPUT_DIR/detector_only``; the model is left as it was. Returns the metrics (also in
        ``OUTPUT_DIR/detector_only/eval_results.json``)."""
        heads = (model.module if isinstance(model, DistributedDataParallel) else model).roi_heads
        out_dir = os.path.join(cfg.OUTPUT_DIR, DETECTOR_ONLY_DIR)
        only = cfg.clone()
        only.defrost()
        only.OUTPUT_DIR = out_dir
        only.freeze()
        rule, mask_on = heads.fusion_rule, heads.mask_on
        heads.fusion_rule, heads.mask_on = "", False
        try:
            logging.getLogger(__name__).info("Detector-only evaluation (fusion off, boxes only)")
            results = super().test(only, model)
        finally:
            heads.fusion_rule, heads.mask_on = rule, mask_on
        _write_eval_results(out_dir, results)
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader with ``OVDDatasetMapper``, after checking that
        ``MODEL.OVD.TRAIN_VOCABULARY`` names every training dataset's classes in order. Detectron2's
        ``TrainingSampler`` is replaced by the equivalent ``InfiniteShardedSampler`` (seeded by
        ``SEED``), whose start the trainer sets on resume; it is the loader's ``ovdet_sampler``."""
        kwargs = _train_loader_from_config(cfg, mapper=OVDDatasetMapper(cfg, is_train=True))
        # (checked before the model was built too; again for classes known only once loaded)
        for name in cfg.DATASETS.TRAIN:
            check_vocabulary_matches_dataset(
                cfg.MODEL.OVD.TRAIN_VOCABULARY, name, "MODEL.OVD.TRAIN_VOCABULARY"
            )
        store = kwargs["mapper"].vild_store
        if store is not None:  # ViLD embeddings of these images, not another dataset's
            store.check_dataset(kwargs["dataset"], cfg.DATASETS.TRAIN)
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
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with ``OVDDatasetMapper`` (at test time Detectron2's
        ``DatasetMapper``, except that an image that cannot be read is named with its dataset)."""
        mapper = OVDDatasetMapper(cfg, is_train=False, dataset_names=(dataset_name,))
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

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
