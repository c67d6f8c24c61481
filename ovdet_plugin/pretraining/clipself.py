"""CLIPSelf self-distillation (Wu et al., ICLR 2024; methods §3.1-3.7).

The student is the CLIP ViT read as a dense map (helper module
:class:`ovdet_plugin.clip.dense.DenseCLIPViT`: value-only last block, ``ln_post``, ``proj``,
L2-normalised); the teacher is a frozen copy of the original tower. Per image, regions are either
a random m x n grid (image-patch variant) or proposal boxes (proposal variant); the student's
region feature is a 1x1 RoIAlign on its dense map, the teacher's is its image embedding of the
region crop (resized by its long side and zero-padded to the tower's input size); the loss is
``1 - mean cosine``. The saved weights are ``alpha * student + (1 - alpha) * teacher``.
"""

import copy
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.engine import HookBase
from detectron2.utils import comm
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from ..clip.crops import normalize_for_clip, padded_crops, roi_align_crops
from ..clip.dense import DenseCLIPViT, checked_tile_stride
from ..clip.loading import build_clip_model, clip_image_size
from ..utils.atomic_io import atomic_write_path

__all__ = [
    "CLIPSelfImageDataset",
    "CLIPSelfModel",
    "ExportEnsembleHook",
    "annotation_boxes",
    "clipself_loss",
    "collate_images",
    "ensemble_state_dict",
    "grid_choices",
    "list_training_images",
    "load_proposals",
    "region_contrastive_loss",
    "roi_features",
    "sample_grid_boxes",
]

logger = logging.getLogger(__name__)

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ---------------------------------------------------------------------- regions
# Region sources of the student (MODEL.OVD.CLIPSELF.MODE).
REGION_MODES = ("grid", "proposals", "annotations")
# MODEL.OVD.CLIPSELF.TEACHER_CROP_STYLE -> crop function (image, boxes, size, scale).
TEACHER_CROP_STYLES = {"padded": padded_crops, "stretched": roi_align_crops}


def grid_choices(max_split: int = 6) -> List[Tuple[int, int]]:
    """Every (m rows, n cols): m in 1..max_split, n in [floor((m+1)/2), min(2m, max_split)], so the
    grid aspect stays within 1:2-2:1 (CLIPSelf ``_init_choices``, methods §3.4)."""
    return [
        (m, n)
        for m in range(1, max_split + 1)
        for n in range((m + 1) // 2, min(2 * m, max_split) + 1)
    ]


def sample_grid_boxes(
    width: int,
    height: int,
    *,
    max_split: int = 6,
    max_boxes: int = 20,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random grid cells of a ``width`` x ``height`` image (methods §3.4).

    One (m, n) of :func:`grid_choices` uniformly; an even m x n split of the image with integer
    pixel edges (``round(linspace)``), so the cells tile the image exactly; cells shuffled and at
    most ``max_boxes`` kept.

    Returns:
        (K, 4) float XYXY pixel boxes with integer values, K = min(m n, max_boxes).
    """
    choices = grid_choices(max_split)
    m, n = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    ys = np.round(np.linspace(0, height, m + 1)).astype(int)
    xs = np.round(np.linspace(0, width, n + 1)).astype(int)
    boxes = torch.tensor(
        [[xs[j], ys[i], xs[j + 1], ys[i + 1]] for i in range(m) for j in range(n)],
        dtype=torch.float32,
    )
    order = torch.randperm(len(boxes), generator=generator)[:max_boxes]
    return boxes[order]


def roi_features(dense: torch.Tensor, boxes: Sequence[torch.Tensor], stride: int) -> torch.Tensor:
    """Student region features: 1x1 RoIAlign on the dense map (methods §3.2: output 1x1,
    ``sampling_ratio=-1``, ``aligned=True``; pixel boxes scaled by 1/stride), L2-normalised.

    Args:
        dense: (B, D, h, w) map; boxes: B tensors (K_i, 4) XYXY in input pixels.
    Returns:
        (sum K_i, D).
    """
    rois = torch.cat(
        [torch.cat([b.new_full((len(b), 1), i), b], 1) for i, b in enumerate(boxes)], 0
    ).to(dense)
    feats = roi_align(
        dense, rois, (1, 1), spatial_scale=1.0 / stride, sampling_ratio=-1, aligned=True
    )
    return F.normalize(feats.flatten(1), dim=-1)


def clipself_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - mean cosine`` of (K, D) region embeddings (CLIPSelf ``__call__``, methods §3.5)."""
    return 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()


def region_contrastive_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE of (K, D) L2-normalised region embeddings: each student region must pick its own
    teacher crop among the K of this process's batch (cross-entropy of ``temperature * student
    @ teacher.T`` against the diagonal; no gathering across ranks). Not in CLIPSelf: an addition
    for towers whose students, under the cosine loss alone, drift toward the mean teacher
    embedding."""
    logits = float(temperature) * student @ teacher.t()
    return F.cross_entropy(logits, torch.arange(len(student), device=student.device))


def check_ensemble_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless 0 <= ``alpha`` <= 1 (outside, the exported weights
    extrapolate beyond both student and teacher)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(
            f"MODEL.OVD.CLIPSELF.ALPHA_ENSEMBLE must be in [0, 1] (the student's share of the "
            f"exported weights), got {alpha}. Use 0.7 (ViT-B/16) or 0.95 (ViT-L/14) as CLIPSelf "
            "does."
        )


MAX_EMPTY_BATCHES = 20  # consecutive batches without one readable image before CLIPSelf stops


def ensemble_state_dict(
    student: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor], alpha: float
) -> Dict[str, torch.Tensor]:
    """``alpha * student + (1 - alpha) * teacher`` for every floating entry (CLIPSelf
    ``student_teacher_ensemble``, methods §3.7); other entries are the student's."""
    check_ensemble_alpha(alpha)
    out = {}
    for k, v in student.items():
        t = teacher.get(k)
        if t is not None and v.is_floating_point():
            out[k] = alpha * v.detach() + (1.0 - alpha) * t.detach().to(v)
        else:
            out[k] = v.detach().clone()
    return out


# ---------------------------------------------------------------------- model
class CLIPSelfModel(nn.Module):
    """Student (the CLIP model, its tower read densely) + frozen teacher tower; ``forward(batch)``
    returns ``{"loss_clipself": ...}``.

    ``batch``: list of dicts ``{"image": (3, h, w) float in [0, 1], long side <= image_size,
    "proposals": optional (K, 4) XYXY boxes in those pixels}``.
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        image_size: int = 1024,
        max_split: int = 6,
        max_boxes: int = 20,
        train_blocks: int = -1,
        mode: str = "grid",
        teacher_crop_scale: float = -1.0,
        teacher_crop_style: str = "padded",
        tower_window: int = 0,
        tower_window_stride: int = 0,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 10.0,
        value_only_last: bool = True,
    ):
        """
        Args:
            clip_model: open_clip ``CLIP`` with a ``VisionTransformer`` tower (the student).
            image_size: student input side (images padded bottom-right to it, methods §3.3).
            max_split, max_boxes: grid sampling limits (methods §3.4).
            train_blocks: number of last transformer blocks trained, -1 = all (methods §3.6).
            mode: "grid", "proposals" (methods §3.4) or "annotations" (a dataset's own boxes,
                used as proposals: :func:`annotation_boxes`).
            teacher_crop_scale: teacher crop enlargement; -1 = 1.0 (grid) / 1.5 (boxes).
            teacher_crop_style: "padded" (:func:`padded_crops`, the paper) or "stretched"
                (:func:`roi_align_crops`, the aspect ratio not kept).
            tower_window, tower_window_stride: > 0 runs the student on windows of its input and
                averages their maps, as the scorer with the same ``VLM_SCORER.TOWER_WINDOW``
                does at test time (:meth:`DenseCLIPViT.last_block_map`); 0 = the whole image
                (the paper).
            contrastive_weight, contrastive_temperature: > 0 adds this weight x
                :func:`region_contrastive_loss` at this logit scale to the cosine loss (not in
                CLIPSelf); 0 = the paper.
            value_only_last: the student's map runs the last block value-only (CLIPSelf's
                dense map, the default) or with its attention; the F-ViT scorer must read its
                map alike (``VLM_SCORER.LAST_BLOCK``).
        """
        super().__init__()
        if mode not in REGION_MODES:
            raise ValueError(
                f"MODEL.OVD.CLIPSELF.MODE must be one of {list(REGION_MODES)}, got {mode!r}."
            )
        student = DenseCLIPViT(clip_model.visual)  # raises a clear error for non-ViT towers
        p = student.patch_size[0]
        if image_size % p:
            raise ValueError(
                f"MODEL.OVD.CLIPSELF.IMAGE_SIZE {image_size} is not a multiple of the patch size "
                f"{p}; use e.g. {image_size // p * p}."
            )
        self.tower_window = int(tower_window)
        self.tower_window_stride = checked_tile_stride(
            tower_window, tower_window_stride, p, "MODEL.OVD.CLIPSELF.TOWER_WINDOW"
        )
        self.clip = clip_model
        self.__dict__["_student"] = student  # shares self.clip.visual; not a second submodule
        self.teacher = copy.deepcopy(clip_model.visual)
        for prm in self.teacher.parameters():
            prm.requires_grad_(False)
        self.teacher.eval()
        self._lock(train_blocks)
        self.image_size = int(image_size)
        self.max_split = int(max_split)
        self.max_boxes = int(max_boxes)
        self.mode = mode
        if teacher_crop_scale < 0:
            teacher_crop_scale = 1.0 if mode == "grid" else 1.5
        self.teacher_crop_scale = float(teacher_crop_scale)
        if teacher_crop_style not in TEACHER_CROP_STYLES:
            raise ValueError(
                f"MODEL.OVD.CLIPSELF.TEACHER_CROP_STYLE must be one of "
                f"{sorted(TEACHER_CROP_STYLES)}, got {teacher_crop_style!r}; 'padded' is the "
                "paper's."
            )
        self.teacher_crop_style = teacher_crop_style
        self.teacher_size = clip_image_size(clip_model)[0]
        if contrastive_weight > 0 and contrastive_temperature <= 0:
            raise ValueError(
                f"MODEL.OVD.CLIPSELF.CONTRASTIVE_TEMPERATURE must be > 0 (the InfoNCE logit "
                f"scale), got {contrastive_temperature}; 10.0 is the default."
            )
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_temperature = float(contrastive_temperature)
        self.value_only_last = bool(value_only_last)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.OVD.CLIPSELF
        return {
            "clip_model": build_clip_model(
                cfg.MODEL.OVD.CLIP.MODEL_NAME, cfg.MODEL.OVD.CLIP.PRETRAINED
            ),
            "image_size": c.IMAGE_SIZE,
            "max_split": c.MAX_SPLIT,
            "max_boxes": c.MAX_BOXES,
            "train_blocks": c.TRAIN_BLOCKS,
            "mode": c.MODE,
            "teacher_crop_scale": c.TEACHER_CROP_SCALE,
            "teacher_crop_style": c.TEACHER_CROP_STYLE,
            "tower_window": c.TOWER_WINDOW,
            "tower_window_stride": c.TOWER_WINDOW_STRIDE,
            "contrastive_weight": c.CONTRASTIVE_WEIGHT,
            "contrastive_temperature": c.CONTRASTIVE_TEMPERATURE,
            "value_only_last": c.VALUE_ONLY_LAST_BLOCK,
        }

    @property
    def student(self) -> DenseCLIPViT:
        return self.__dict__["_student"]

    def _lock(self, train_blocks: int) -> None:
        """Freeze everything but the last ``train_blocks`` blocks of the image tower (methods §3.6:
        embeddings, ln_post, proj and the text tower stay frozen)."""
        for prm in self.clip.parameters():
            prm.requires_grad_(False)
        blocks = self.clip.visual.transformer.resblocks
        n = len(blocks) if train_blocks < 0 else min(int(train_blocks), len(blocks))
        for blk in list(blocks)[len(blocks) - n :]:
            for prm in blk.parameters():
                prm.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen, always in eval mode
        return self

    def region_boxes(self, sample: Dict) -> torch.Tensor:
        """(K, 4) student regions of one sample: grid cells or (a random subset of) proposals."""
        h, w = sample["image"].shape[-2:]
        if self.mode == "grid":
            return sample_grid_boxes(w, h, max_split=self.max_split, max_boxes=self.max_boxes)
        props = sample.get("proposals")
        if props is None:
            raise ValueError(f"MODE {self.mode!r} needs a 'proposals' entry in every sample.")
        keep = torch.randperm(len(props))[: self.max_boxes]
        return props[keep].float()

    def teacher_inputs(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(K, 3, T, T) CLIP-normalised teacher crops of one [0, 1] image (methods §3.3-3.4)."""
        if len(boxes) == 0:
            return image.new_zeros(0, 3, self.teacher_size, self.teacher_size)
        crop = TEACHER_CROP_STYLES[self.teacher_crop_style]
        return normalize_for_clip(crop(image, boxes, self.teacher_size, self.teacher_crop_scale))

    def forward(self, batch: List[Dict]) -> Dict[str, torch.Tensor]:
        device = self.clip.logit_scale.device
        samples = [dict(s, image=s["image"].to(device)) for s in batch]
        self._empty_batches = 0 if samples else getattr(self, "_empty_batches", 0) + 1
        if self._empty_batches >= MAX_EMPTY_BATCHES:
            raise RuntimeError(
                f"CLIPSelf: not one readable image in the last {MAX_EMPTY_BATCHES} batches (see "
                "the 'Skipped unreadable image' warnings). Check DATASETS.TRAIN's image files "
                "and MODEL.OVD.CLIPSELF.IMAGE_FOLDER."
            )
        if not samples:  # every image of the batch was unreadable: a zero loss keeps DDP in step
            return {"loss_clipself": sum(p.sum() * 0 for p in self.parameters() if p.requires_grad)}
        boxes = [self.region_boxes(s).to(device) for s in samples]
        S = self.image_size
        images = torch.zeros(len(samples), 3, S, S, device=device)
        for i, s in enumerate(samples):  # pad bottom-right to S x S (methods §3.3)
            h, w = s["image"].shape[-2:]
            images[i, :, :h, :w] = s["image"]
        dense = self.student(  # (B, D, S/p, S/p)
            normalize_for_clip(images),
            tile=self.tower_window,
            tile_stride=self.tower_window_stride,
            value_only_last=self.value_only_last,
        )
        if sum(len(b) for b in boxes) == 0:
            return {"loss_clipself": dense.sum() * 0}
        student = roi_features(dense, boxes, self.student.patch_size[0])
        with torch.no_grad():
            crops = torch.cat([self.teacher_inputs(s["image"], b) for s, b in zip(samples, boxes)])
            teacher = F.normalize(self.teacher(crops), dim=-1)
        losses = {"loss_clipself": clipself_loss(student, teacher)}
        if self.contrastive_weight > 0:
            losses["loss_clipself_contrastive"] = self.contrastive_weight * region_contrastive_loss(
                student, teacher, self.contrastive_temperature
            )
        return losses

    # -------------------------------------------------------------- export
    def ensembled_clip_state_dict(self, alpha: float) -> Dict[str, torch.Tensor]:
        """The full open_clip state dict with ``visual.*`` = alpha * student + (1-alpha) * teacher
        (methods §3.7); loads strictly with ``build_clip_model(name, path)``."""
        student = self.clip.state_dict()
        teacher = {"visual." + k: v for k, v in self.teacher.state_dict().items()}
        return ensemble_state_dict(student, teacher, alpha)

    def export(self, path: str, alpha: float) -> None:
        """Write :meth:`ensembled_clip_state_dict` to ``path`` atomically."""
        state = {k: v.cpu() for k, v in self.ensembled_clip_state_dict(alpha).items()}
        with atomic_write_path(path) as tmp:
            torch.save(state, tmp)
        logger.info("Saved the CLIPSelf student-teacher ensemble (alpha %.3g) to %s", alpha, path)


class ExportEnsembleHook(HookBase):
    """Every ``period`` iterations and at ``max_iter``, export the ensembled CLIP weights as
    ``<output_dir>/<name>_<iter>.pt`` (and ``<name>_final.pt`` at the end); main process only."""

    def __init__(
        self,
        model: CLIPSelfModel,
        output_dir: str,
        name: str,
        alpha: float,
        period: int,
        max_iter: int,
    ):
        self.model, self.output_dir, self.name = model, output_dir, name
        self.alpha, self.period, self.max_iter = float(alpha), int(period), int(max_iter)

    def after_step(self):
        it = self.trainer.iter
        if not comm.is_main_process():
            return
        if it + 1 >= self.max_iter:
            self.model.export(os.path.join(self.output_dir, f"{self.name}_final.pt"), self.alpha)
        elif self.period > 0 and (it + 1) % self.period == 0:
            self.model.export(os.path.join(self.output_dir, f"{self.name}_{it:07d}.pt"), self.alpha)


# ---------------------------------------------------------------------- data
def list_training_images(
    dataset_names: Sequence[str], folder: str = "", dataset_files: Optional[Sequence[str]] = None
) -> List[str]:
    """Image files of registered Detectron2 datasets (their "file_name"s; labels unused) and of a
    folder (recursive), deduplicated, in a fixed order. ``dataset_files``: the datasets' file
    names when the caller has already read them (MODE "annotations" reads them with their boxes),
    so the datasets are not loaded a second time."""
    from detectron2.data import DatasetCatalog

    files: List[str] = []
    if dataset_files is not None:
        files.extend(dataset_files)
    else:
        for name in dataset_names:
            files.extend(d["file_name"] for d in DatasetCatalog.get(name))
    if folder:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"MODEL.OVD.CLIPSELF.IMAGE_FOLDER {folder!r} is not a folder.")
        for root, _, names in sorted(os.walk(folder)):
            files.extend(
                os.path.join(root, n) for n in sorted(names) if n.lower().endswith(_IMAGE_EXTS)
            )
    files = list(dict.fromkeys(files))
    if not files:
        raise ValueError(
            "CLIPSelf has no training image: set DATASETS.TRAIN to registered Detectron2 datasets "
            "and/or MODEL.OVD.CLIPSELF.IMAGE_FOLDER to a folder of images."
        )
    return files


def annotation_boxes(dataset_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """MODE "annotations": {file name: (K, 4) XYXY absolute boxes} of the annotated objects of
    registered Detectron2 datasets, labels unused. The official recipe's proposals come from an
    RPN trained on the base classes (methods §3.4); a split holding only base-class boxes (e.g.
    ``lvis_v1_train_ov``, rare boxes removed) gives those objects' own boxes instead, and never
    a novel box."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    boxes: Dict[str, np.ndarray] = {}
    for name in dataset_names:
        for d in DatasetCatalog.get(name):
            rows = [
                BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                for a in d.get("annotations", [])
            ]
            boxes[d["file_name"]] = np.asarray(rows, dtype=np.float32).reshape(-1, 4)
    return boxes


def load_proposals(path: str) -> Dict[str, np.ndarray]:
    """Proposals JSON -> {file name: (K, 4) XYXY array}. Accepts ``{"<file>": [[x0, y0, x1, y1],
    ...]}`` or ``[{"file_name": ..., "boxes": [...]}, ...]``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Proposals file {path!r} not found (MODEL.OVD.CLIPSELF.PROPOSALS_FILE); MODE "
            "'proposals' needs one (see the README for its format)."
        )
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, list):
        data = {d["file_name"]: d["boxes"] for d in data}
    return {k: np.asarray(v, dtype=np.float32).reshape(-1, 4) for k, v in data.items()}


class CLIPSelfImageDataset(Dataset):
    """Images resized (long side) to ``image_size``, in [0, 1]; with proposals when given.

    ``__getitem__`` returns ``{"image": (3, h, w), "file_name", "proposals": (K, 4) in resized
    pixels (proposal mode)}`` or None for an unreadable image (dropped by :func:`collate_images`).
    """

    def __init__(
        self,
        files: Sequence[str],
        image_size: int,
        proposals: Optional[Dict[str, np.ndarray]] = None,
        size_range: Tuple[float, float] = (8.0, 1024.0),
    ):
        self.files = list(files)
        self.image_size = int(image_size)
        self.proposals = None
        if proposals is not None:
            self.proposals = []
            for f in self.files:
                boxes = proposals.get(f, proposals.get(os.path.basename(f)))
                if boxes is None:
                    raise KeyError(
                        f"The proposals file has no entry for image {f!r} (looked up by path and "
                        "by file name). Add its boxes (an empty list is allowed) or drop the image."
                    )
                side = np.sqrt(
                    np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
                    * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
                )
                # keep proposals with 8^2 <= area <= 1024^2 (methods §3.4)
                keep = (side >= size_range[0]) & (side <= size_range[1])
                self.proposals.append(boxes[keep])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Optional[Dict]:
        path = self.files[i]
        try:
            img = Image.open(path).convert("RGB")
        except Exception as e:
            logger.warning("Skipped unreadable image %s (%s: %s).", path, type(e).__name__, e)
            return None
        w, h = img.size
        scale = self.image_size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        # ResizeLongest(image_size) (methods §3.3)
        img = img.resize((nw, nh), Image.BICUBIC)
        out = {
            "image": torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0,
            "file_name": path,
        }
        if self.proposals is not None:
            boxes = torch.from_numpy(self.proposals[i] * scale)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, nw)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, nh)
            ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            out["proposals"] = boxes[ok]
        return out


def collate_images(samples: List[Optional[Dict]]) -> List[Dict]:
    """Drop unreadable images (None) and return the list."""
    return [s for s in samples if s is not None]
