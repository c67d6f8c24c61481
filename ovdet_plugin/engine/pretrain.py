"""Entry points of ``tools/pretrain_rovit.py`` and ``tools/train_clipself.py``: their argument
parser, data loaders and the ``main(args)`` functions that Detectron2's ``launch`` runs in every
process. The config comes from the tools' one setup, :func:`~.setup.setup_ovdet_cfg`."""

import logging
import os

import torch
from detectron2.engine import HookBase, default_argument_parser
from detectron2.utils import comm
from torch.utils.data import DataLoader

from ..data.datasets.custom import add_dataset_arguments
from ..evaluation.zero_shot_crops import format_accuracy, load_dataset_crops, zero_shot_accuracy
from ..pretraining.caption_data import (
    CaptionDataset,
    clip_image_transform,
    collate_captions,
    expand_shards,
    load_caption_list,
)
from ..pretraining.clipself import (
    CLIPSelfImageDataset,
    CLIPSelfModel,
    ExportEnsembleHook,
    annotation_boxes,
    check_ensemble_alpha,
    collate_images,
    list_training_images,
    load_proposals,
)
from ..pretraining.rovit import RegionAwareCLIP, export_state_dict
from .setup import release_process_group, setup_ovdet_cfg
from .train_loop import InfiniteShardedSampler, get_seed, run_training

__all__ = ["argument_parser", "clipself_main", "rovit_main", "ZeroShotCropEvalHook"]

logger = logging.getLogger(__name__)


def argument_parser(description: str):
    """Detectron2's ``default_argument_parser`` (``--config-file --resume --num-gpus
    --num-machines --machine-rank --dist-url opts``) plus ``--stop-after-iter`` and
    ``--register-dataset``."""
    parser = add_dataset_arguments(default_argument_parser())
    parser.description = description
    parser.add_argument(
        "--stop-after-iter",
        type=int,
        default=0,
        help="stop after this many iterations (in total) as if killed, without the final save; "
        "the LR schedule still spans SOLVER.MAX_ITER (used to test --resume)",
    )
    return parser


def _per_rank_batch(cfg) -> int:
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the number of "
            f"processes {world}; make it a multiple."
        )
    return cfg.SOLVER.IMS_PER_BATCH // world


def build_caption_loader(cfg, image_size: int, start_iter: int = 0) -> DataLoader:
    """This rank's RO-ViT loader over MODEL.OVD.ROVIT.CAPTION_FILES / SHARDS, at ``start_iter``."""
    r = cfg.MODEL.OVD.ROVIT
    records = []
    for path in [p.strip() for p in r.CAPTION_FILES.split(",") if p.strip()]:
        records.extend(load_caption_list(path, r.IMAGE_ROOT))
    shards = expand_shards(r.SHARDS) if r.SHARDS else []
    dataset = CaptionDataset(
        records=records,
        shards=shards,
        transform=clip_image_transform(image_size),
        seed=get_seed(cfg),
    )
    batch = _per_rank_batch(cfg)
    dataset.set_start(start_iter, batch)
    return DataLoader(
        dataset,
        batch_size=batch,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collate_captions,
        drop_last=True,
        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
    )


def _require_readable_images(files, probe: int = 16) -> None:
    """Open (header only) the first ``probe`` images; raise before training when none can be
    read (a wrong image folder would otherwise train on nothing and export the input weights)."""
    from PIL import Image

    errors = []
    for path in files[:probe]:
        try:
            with Image.open(path) as img:
                img.verify()
            return
        except Exception as e:
            errors.append(f"{path} ({type(e).__name__}: {e})")
    if errors:
        raise RuntimeError(
            f"None of the first {len(errors)} training images can be read, e.g. {errors[0]}. "
            "Check the image files of DATASETS.TRAIN / MODEL.OVD.CLIPSELF.IMAGE_FOLDER."
        )


def build_clipself_loader(cfg, start_iter: int = 0) -> DataLoader:
    """This rank's CLIPSelf loader (DATASETS.TRAIN and/or MODEL.OVD.CLIPSELF.IMAGE_FOLDER)."""
    c = cfg.MODEL.OVD.CLIPSELF
    proposals = None
    if c.MODE == "annotations":
        if c.IMAGE_FOLDER:
            raise ValueError(
                "MODEL.OVD.CLIPSELF.MODE 'annotations' takes its images and boxes from "
                f"DATASETS.TRAIN; IMAGE_FOLDER {c.IMAGE_FOLDER!r} has no boxes. Leave it empty, "
                "or use MODE 'grid' (or 'proposals' with a PROPOSALS_FILE covering its images)."
            )
        proposals = annotation_boxes(cfg.DATASETS.TRAIN)  # one read of the datasets: files + boxes
    files = list_training_images(
        cfg.DATASETS.TRAIN, c.IMAGE_FOLDER, None if proposals is None else list(proposals)
    )
    _require_readable_images(files)
    if c.MODE == "proposals":
        proposals = load_proposals(c.PROPOSALS_FILE)
    dataset = CLIPSelfImageDataset(files, c.IMAGE_SIZE, proposals, tuple(c.PROPOSAL_SIZE_RANGE))
    batch = _per_rank_batch(cfg)
    sampler = InfiniteShardedSampler(len(dataset), seed=get_seed(cfg), start=start_iter * batch)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collate_images,
    )


def _build_under_seed(cfg, builder):
    torch.manual_seed(get_seed(cfg))  # the same initial weights on every rank and every run
    return builder(cfg).to(cfg.MODEL.DEVICE)


class ZeroShotCropEvalHook(HookBase):
    """Zero-shot crop accuracy of the CLIP being pretrained on every DATASETS.TEST dataset (its
    ground-truth boxes cropped with 10% context, classified among the dataset's class names with
    MODEL.OVD.TEXT.PROMPTS), every TEST.EVAL_PERIOD iterations and after the last; the figures go
    to the event storage (metrics.json, tensorboard) as ``zero_shot/<dataset>/<group>`` (groups:
    LVIS r / c / f, or novel / base, and "all"). Main process only; the other ranks wait at their
    next all-reduce. The crops are loaded once, before the first iteration, so a dataset that
    cannot be evaluated stops the run before any training."""

    def __init__(self, model: RegionAwareCLIP, cfg, image_size: int):
        self._model = model
        self._datasets = list(cfg.DATASETS.TEST)
        self._period = int(cfg.TEST.EVAL_PERIOD)
        self._size = image_size
        self._prompts = cfg.MODEL.OVD.TEXT.PROMPTS
        self._crops = {}

    def before_train(self):
        if comm.is_main_process():
            self._crops = {name: load_dataset_crops(name, self._size) for name in self._datasets}

    def _evaluate(self) -> None:
        model = self._model
        was_training = model.training
        model.eval()  # no cropped positional embedding: the detection-time encoder
        try:
            for name in self._datasets:
                acc = zero_shot_accuracy(
                    model.clip,
                    model.tokenizer,
                    self._crops[name],
                    prompts=self._prompts,
                    encode_image=model.encode_image,
                )
                groups = [*self._crops[name]["groups"], "all"]
                self.trainer.storage.put_scalars(
                    **{f"zero_shot/{name}/{g}": acc[g] for g in groups}, smoothing_hint=False
                )
                logger.info("Zero-shot crop accuracy on %s: %s", name, format_accuracy(acc))
        finally:
            model.train(was_training)

    def after_step(self):
        done = self.trainer.iter + 1
        last = done == self.trainer.max_iter
        if self._datasets and comm.is_main_process():
            if last or (self._period > 0 and done % self._period == 0):
                self._evaluate()


def rovit_main(args):
    """RO-ViT image-text pretraining (methods §4.1-4.2) in one process of ``launch``."""
    cfg = setup_ovdet_cfg(args)
    model = _build_under_seed(cfg, RegionAwareCLIP)
    size = cfg.MODEL.OVD.ROVIT.IMAGE_SIZE or model.image_size[0]
    logger.info(
        "RO-ViT pretraining: %s, CPE %s, loss %s, pooling %s, image size %d",
        cfg.MODEL.OVD.CLIP.MODEL_NAME,
        model.cpe,
        model.loss,
        model.pooling,
        size,
    )
    run_training(
        cfg,
        model,
        lambda start: build_caption_loader(cfg, size, start),
        resume=args.resume,
        stop_after=args.stop_after_iter,
        extra_hooks=lambda m, _ckpt: [ZeroShotCropEvalHook(m, cfg, size)],
    )
    if comm.is_main_process() and (
        not args.stop_after_iter or args.stop_after_iter >= cfg.SOLVER.MAX_ITER
    ):
        path = os.path.join(cfg.OUTPUT_DIR, "rovit_clip_final.pt")
        from ..utils.atomic_io import atomic_write_path

        with atomic_write_path(path) as tmp:
            torch.save(export_state_dict(model.clip), tmp)
        logger.info("Saved the pretrained CLIP state dict to %s", path)
    release_process_group()


def clipself_main(args):
    """CLIPSelf self-distillation (methods §3.1-3.7) in one process of ``launch``."""
    cfg = setup_ovdet_cfg(args)
    c = cfg.MODEL.OVD.CLIPSELF
    check_ensemble_alpha(c.ALPHA_ENSEMBLE)  # before any training, not at the first export
    model = _build_under_seed(cfg, CLIPSelfModel)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "CLIPSelf: %s, mode %s, image size %d, teacher crop x%.2g, %d trainable parameters",
        cfg.MODEL.OVD.CLIP.MODEL_NAME,
        c.MODE,
        c.IMAGE_SIZE,
        model.teacher_crop_scale,
        n_train,
    )

    def export_hooks(m, _checkpointer):
        return [
            ExportEnsembleHook(
                m,
                cfg.OUTPUT_DIR,
                c.EXPORT_NAME,
                c.ALPHA_ENSEMBLE,
                cfg.SOLVER.CHECKPOINT_PERIOD,
                cfg.SOLVER.MAX_ITER,
            )
        ]

    run_training(
        cfg,
        model,
        lambda start: build_clipself_loader(cfg, start),
        resume=args.resume,
        stop_after=args.stop_after_iter,
        extra_hooks=export_hooks,
    )
    release_process_group()
