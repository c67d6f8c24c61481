"""Evaluators: OV-COCO (AP50 novel/base/all). LVIS open-vocabulary splits use Detectron2's stock
``LVISEvaluator`` (APr/APc/APf), for which :func:`build_ov_evaluator` picks by
``evaluator_type``. :func:`label_precision`: the share of correctly named detections among those
a picture would draw, from an evaluator's saved results."""

import os

from detectron2.data import MetadataCatalog

from .label_precision import label_precision
from .ov_coco_evaluation import OVCOCOEvaluator, split_average_precision

__all__ = ["OVCOCOEvaluator", "split_average_precision", "build_ov_evaluator", "label_precision"]


def build_ov_evaluator(dataset_name: str, output_dir=None, distributed: bool = True, **kwargs):
    """The evaluator for a dataset registered by the plugin, from its metadata's
    ``evaluator_type``: "lvis" -> ``LVISEvaluator``, "ov_coco" -> :class:`OVCOCOEvaluator`,
    "coco" -> ``COCOEvaluator``. Raises ``ValueError`` for any other type."""
    from detectron2.evaluation import COCOEvaluator, LVISEvaluator

    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if kind == "lvis":
        return LVISEvaluator(dataset_name, distributed=distributed, output_dir=output_dir, **kwargs)
    if kind == "ov_coco":
        return OVCOCOEvaluator(
            dataset_name, distributed=distributed, output_dir=output_dir, **kwargs
        )
    if kind == "coco":
        return COCOEvaluator(dataset_name, distributed=distributed, output_dir=output_dir, **kwargs)
    raise ValueError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}); "
        "known types: 'lvis', 'ov_coco', 'coco'"
    )
