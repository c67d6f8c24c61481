"""The train/test mapper of every method (ViLD, F-VLM, F-ViT, RO-ViT).

:class:`OVDDatasetMapper` is Detectron2's ``DatasetMapper`` plus two training options:
- the papers' large-scale jitter (``MODEL.OVD.INPUT.LSJ_SIZE``: resize by a random factor in
  ``LSJ_SCALE`` of a square of that size, then a fixed-size crop/pad, then a flip; ViLD and F-VLM
  train at 1024 with [0.1, 2.0], methods §1.8, 2.6), with Detectron2's ``ResizeScale`` and
  ``FixedSizeCrop``;
- the image's ViLD proposals, moved by the same augmentation as the image and clipped, as
  ``dataset_dict["vild_proposals"]`` (``Instances`` with ``proposal_boxes`` and ``clip_embeds``);
  an image the tool skipped (recorded in the index, e.g. no proposals) gets none, so it trains
  with the ViLD-text loss only.

A training image that cannot be read when its turn comes (deleted, made unreadable or corrupted
after the dataset was loaded) is skipped with a warning that names the file and the dataset:
the mapper returns None, and Detectron2's loader takes the next image. The skips are counted;
past ``MODEL.OVD.INPUT.MAX_UNREADABLE_IMAGES`` in one loader process (0: at the first one), and
always at test time (a skipped image would change the metrics), it raises instead, naming the
file, the dataset and the fix.
"""

import logging
import os

import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from .datasets import datasets_root
from .vild_embeddings import ViLDEmbeddingStore

__all__ = ["OVDDatasetMapper", "UnreadableImageError"]

logger = logging.getLogger(__name__)


class UnreadableImageError(OSError):
    """A dataset image could not be read by the mapper (missing, unreadable or corrupt)."""


def _raised_reading_image(error: BaseException) -> bool:
    """The error was raised inside Detectron2's ``read_image`` (the image file itself)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "read_image":
            return True
        tb = tb.tb_next
    return False


class OVDDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that adds ``vild_proposals`` (training only)."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        vild_store=None,
        max_vild_proposals: int = 300,
        max_unreadable_images: int = 10,
        dataset_names=(),
        **kwargs,
    ):
        """
        Args:
            vild_store: a :class:`ViLDEmbeddingStore` (or a folder path); None adds nothing.
            max_vild_proposals: proposals kept per image (the first ones, as stored).
            max_unreadable_images: training images that cannot be read which are skipped (with
                a warning each) before the mapper raises; 0 raises at the first one.
            dataset_names: the datasets the images come from (named in the messages).
            kwargs: ``DatasetMapper`` arguments.
        """
        super().__init__(is_train, **kwargs)
        if isinstance(vild_store, str):
            vild_store = ViLDEmbeddingStore(vild_store)
        self.vild_store = vild_store
        self.max_vild_proposals = max_vild_proposals
        self.max_unreadable_images = max_unreadable_images
        self.dataset_names = tuple(dataset_names)
        self.unreadable_images = 0  # skipped so far (in this process)

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except OSError as e:  # missing, unreadable (permissions) or corrupt image file
            if not _raised_reading_image(e):
                raise
            return self._unreadable(dataset_dict, e)

    def _unreadable(self, dataset_dict, error: OSError):
        file_name = dataset_dict.get("file_name")
        names = ", ".join(repr(n) for n in self.dataset_names) or "(not named)"
        what = (
            f"Image {file_name!r} (image_id {dataset_dict.get('image_id')!r}, dataset {names}) "
            f"cannot be read: {type(error).__name__}: {error}."
        )
        fix = (
            "It could be read (or listed) when the dataset was loaded: restore the file, or "
            "remove the image from the dataset's annotation file, then resume (--resume)."
        )
        self.unreadable_images += 1
        if not self.is_train:
            raise UnreadableImageError(f"{what} {fix}") from error
        if self.unreadable_images > self.max_unreadable_images:
            raise UnreadableImageError(
                f"{what} That is {self.unreadable_images} unreadable training images in this "
                f"loader process, more than MODEL.OVD.INPUT.MAX_UNREADABLE_IMAGES "
                f"({self.max_unreadable_images}). {fix}"
            ) from error
        logger.warning(
            "%s Skipped (%d of at most %d in this loader process, "
            "MODEL.OVD.INPUT.MAX_UNREADABLE_IMAGES). %s",
            what,
            self.unreadable_images,
            self.max_unreadable_images,
            fix,
        )
        return None  # Detectron2's loader takes another image

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        size = cfg.MODEL.OVD.INPUT.LSJ_SIZE
        if is_train and size > 0:
            low, high = cfg.MODEL.OVD.INPUT.LSJ_SCALE
            ret["augmentations"] = [
                T.ResizeScale(low, high, size, size),
                T.FixedSizeCrop((size, size)),
                T.RandomFlip(horizontal=True),
            ]
        directory = cfg.MODEL.OVD.VILD.EMBEDDINGS_DIR
        if directory and is_train:
            if not os.path.isabs(directory) and not os.path.isdir(directory):
                directory = os.path.join(datasets_root(), directory)  # under $DETECTRON2_DATASETS
            ret["vild_store"] = ViLDEmbeddingStore(directory)
        ret["max_vild_proposals"] = cfg.MODEL.OVD.VILD.MAX_PROPOSALS
        ret["max_unreadable_images"] = cfg.MODEL.OVD.INPUT.MAX_UNREADABLE_IMAGES
        ret["dataset_names"] = tuple(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
        return ret

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        if self.vild_store is None:
            return
        if self.vild_store.skip_reason(dataset_dict["image_id"]) is not None:
            return  # no distillation RoIs for this image (the heads train it on the text loss)
        # (with the file name: an id stored for another dataset's image is refused)
        boxes, embeds = self.vild_store.get(dataset_dict["image_id"], dataset_dict.get("file_name"))
        boxes, embeds = boxes[: self.max_vild_proposals], embeds[: self.max_vild_proposals]
        moved = Boxes(torch.as_tensor(transforms.apply_box(boxes), dtype=torch.float32))
        moved.clip(image_shape)
        keep = moved.nonempty()
        dataset_dict["vild_proposals"] = Instances(
            image_shape, proposal_boxes=moved[keep], clip_embeds=embeds[keep]
        )
