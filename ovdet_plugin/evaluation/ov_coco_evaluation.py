"""OV-COCO evaluation: Detectron2's ``COCOEvaluator`` plus AP50 (and AP) over the novel, base and
all classes of the open-vocabulary split.

Class membership is read from the dataset's metadata (``thing_class_splits``, set by the plugin's
registrations from :mod:`ovdet_plugin.vocabulary`), never from the number of classes or the
dataset's name. The headline OV-COCO metric is box ``AP50_novel`` (methods (protocols)).

On Detectron2 builds without the ``_C`` extension, ``COCOEvaluator`` falls back to the official
pycocotools ``COCOeval`` by itself; this evaluator defaults to ``use_fast_impl=False`` anyway so
that the figures are the official ones.
"""

import logging
import math
from typing import Dict, Mapping, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table

__all__ = ["OVCOCOEvaluator", "split_average_precision"]

logger = logging.getLogger(__name__)

GROUPS = ("novel", "base", "all")


def split_average_precision(
    coco_eval, split_of_cat_id: Mapping[int, str], iou: float = 0.5
) -> Dict[str, float]:
    """Mean per-class AP over the novel, base and all (novel + base) classes, in percent.

    Args:
        coco_eval: an evaluated and accumulated pycocotools ``COCOeval``.
        split_of_cat_id: dataset category id -> "base" / "novel" / "unused".
        iou: an IoU threshold of ``coco_eval.params.iouThrs`` (0.5 for AP50), or None for the
            mean over all thresholds (COCO AP).

    Returns:
        ``{"novel": ..., "base": ..., "all": ...}``; NaN for a group with no ground truth.
        Classes without ground truth in the evaluated images are left out of the means, as
        COCOeval leaves them out of AP.
    """
    precision = coco_eval.eval["precision"]  # (iou, recall, class, area, max dets)
    if iou is None:
        p = precision[:, :, :, 0, -1]
    else:
        t = np.flatnonzero(np.isclose(coco_eval.params.iouThrs, iou))
        if not len(t):
            raise ValueError(f"IoU {iou} is not one of {list(coco_eval.params.iouThrs)}")
        p = precision[t[0], :, :, 0, -1][None]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = p[:, :, k]
        values = values[values > -1]
        if values.size:
            per_class[cat_id] = float(np.mean(values) * 100)
    out = {}
    for group in GROUPS:
        members = [
            ap
            for cat_id, ap in per_class.items()
            if split_of_cat_id.get(cat_id) in ((group,) if group != "all" else ("base", "novel"))
        ]
        out[group] = float(np.mean(members)) if members else float("nan")
    return out


class OVCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` that also reports ``AP50_novel``, ``AP50_base``, ``AP50_all`` and
    ``AP_novel``, ``AP_base``, ``AP_all`` for every task (bbox, segm).

    The dataset's metadata must have ``thing_class_splits`` (one of "base"/"novel"/"unused" per
    contiguous class) and ``thing_dataset_id_to_contiguous_id``, as ``coco_2017_ov_val`` and the
    other registrations of :mod:`ovdet_plugin.data` have. Its ground-truth file must hold exactly
    the classes of the metadata (for OV-COCO: the 65-class file of ``datasets/prepare_ov_coco.py``).
    """

    def __init__(self, dataset_name: str, tasks=None, distributed=True, output_dir=None, **kwargs):
        kwargs.setdefault("use_fast_impl", False)
        meta = MetadataCatalog.get(dataset_name)
        missing = [
            k
            for k in ("thing_class_splits", "thing_dataset_id_to_contiguous_id")
            if not hasattr(meta, k)
        ]
        if missing:
            raise ValueError(
                f"OVCOCOEvaluator needs the metadata {missing} of dataset {dataset_name!r} to tell "
                "novel from base classes; register the dataset with ovdet_plugin.data (e.g. "
                "coco_2017_ov_val) or set them with MetadataCatalog.get(name).set(...)."
            )
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        id_map = meta.thing_dataset_id_to_contiguous_id
        splits: Sequence[str] = meta.thing_class_splits
        if len(splits) != len(id_map):
            raise ValueError(
                f"{dataset_name}: {len(splits)} class splits for {len(id_map)} classes in metadata"
            )
        self._split_of_cat_id = {int(d): splits[i] for d, i in id_map.items()}
        if self._do_evaluation:
            if "info" not in self._coco_api.dataset:
                # pycocotools >= 2.0.8 copies the ground truth's "info" in loadRes and fails on
                # files without it (common in hand-made COCO files); it is not used otherwise.
                self._coco_api.dataset["info"] = {}
            gt_ids = set(self._coco_api.getCatIds())
            if gt_ids != set(self._split_of_cat_id):
                raise ValueError(
                    f"The ground truth {meta.json_file} has {len(gt_ids)} categories but the "
                    f"metadata of {dataset_name!r} has {len(id_map)}; per-class AP would be "
                    "misaligned. For OV-COCO, evaluate on the 65-class file written by "
                    "datasets/prepare_ov_coco.py (see datasets/README.md, section 'OV-COCO')."
                )

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if iou_type not in ("bbox", "segm"):
            return results
        if coco_eval is None:
            extra = {f"{m}_{g}": float("nan") for m in ("AP50", "AP") for g in GROUPS}
        else:
            ap50 = split_average_precision(coco_eval, self._split_of_cat_id, iou=0.5)
            ap = split_average_precision(coco_eval, self._split_of_cat_id, iou=None)
            extra = {f"AP50_{g}": ap50[g] for g in GROUPS}
            extra.update({f"AP_{g}": ap[g] for g in GROUPS})
        counts = {g: sum(s == g for s in self._split_of_cat_id.values()) for g in ("novel", "base")}
        self._logger.info(
            f"Open-vocabulary {iou_type} results ({counts['novel']} novel, {counts['base']} base "
            "classes):\n" + create_small_table({k: v for k, v in extra.items()})
        )
        if any(math.isnan(v) for v in extra.values()):
            self._logger.info("NaN: no ground truth (or no predictions) for that group.")
        results.update(extra)
        return results
