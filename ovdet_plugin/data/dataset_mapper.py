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
"""

import os

import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from .datasets import datasets_root
from .vild_embeddings import ViLDEmbeddingStore

__all__ = ["OVDDatasetMapper"]


class OVDDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that adds ``vild_proposals`` (training only)."""

    @configurable
    def __init__(self, is_train: bool, *, vild_store=None, max_vild_proposals: int = 300, **kwargs):
        """
        Args:
            vild_store: a :class:`ViLDEmbeddingStore` (or a folder path); None adds nothing.
            max_vild_proposals: proposals kept per image (the first ones, as stored).
            kwargs: ``DatasetMapper`` arguments.
        """
        super().__init__(is_train, **kwargs)
        if isinstance(vild_store, str):
            vild_store = ViLDEmbeddingStore(vild_store)
        self.vild_store = vild_store
        self.max_vild_proposals = max_vild_proposals

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
        return ret

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        if self.vild_store is None:
            return
        if self.vild_store.skip_reason(dataset_dict["image_id"]) is not None:
            return  # no distillation RoIs for this image (the heads train it on the text loss)
        boxes, embeds = self.vild_store.get(dataset_dict["image_id"])
        boxes, embeds = boxes[: self.max_vild_proposals], embeds[: self.max_vild_proposals]
        moved = Boxes(torch.as_tensor(transforms.apply_box(boxes), dtype=torch.float32))
        moved.clip(image_shape)
        keep = moved.nonempty()
        dataset_dict["vild_proposals"] = Instances(
            image_shape, proposal_boxes=moved[keep], clip_embeds=embeds[keep]
        )
