#!/usr/bin/env python
"""Precompute ViLD-image distillation targets (METHODS 1.4-1.5): for every training image, up to
--max-proposals proposals and the CLIP image embedding of each proposal's crop.

Proposals come from a Detectron2 proposal file (``--proposals file.pkl``, the format of
``DATASETS.PROPOSAL_FILES_TRAIN``) or from a trained model's proposal generator
(``--config-file`` + ``MODEL.WEIGHTS``, e.g. an RPN trained on base classes). Each box is cropped
at 1x and 1.5x its size (``--scales``), resized to the CLIP tower's input size, encoded, L2-
normalised; the scales are averaged and renormalised. Results go to --output as shards that a
later run resumes from (images already indexed are skipped).

Example::

    python tools/precompute_vild_embeddings.py --config-file configs/lvis/vild_R50_FPN.yaml \
        --dataset lvis_v1_train_ov --clip-model ViT-B-32 --clip-pretrained /path/ViT-B-32.pt \
        --output datasets/vild_embeddings/lvis_v1_train_ov MODEL.WEIGHTS output/rpn/model_final.pth
"""

import argparse
import time

import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import load_proposals_into_dataset
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.logger import setup_logger
from torchvision.ops import roi_align
from tqdm import tqdm

import ovdet_plugin
from ovdet_plugin.clip import build_clip_model, clip_image_size
from ovdet_plugin.data.vild_embeddings import ViLDEmbeddingWriter, iter_missing
from ovdet_plugin.pretraining.caption_data import CLIP_MEAN, CLIP_STD


def scaled_boxes(boxes: torch.Tensor, scale: float, height: int, width: int) -> torch.Tensor:
    """(M, 4) XYXY boxes enlarged by ``scale`` around their centres, clipped to the image."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    out = torch.cat([centre - half, centre + half], dim=1)
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


@torch.no_grad()
def crop_embeddings(clip_model, image: torch.Tensor, boxes: torch.Tensor, scales, batch_size=64):
    """CLIP embeddings of box crops.

    Args:
        image: (3, H, W) float RGB in [0, 1]; boxes: (M, 4) XYXY pixels.
    Returns:
        (M, D) L2-normalised: per scale, crop -> resize to the tower's input -> encode -> normalise;
        then the mean over scales, renormalised (ViLD's 1x + 1.5x ensemble).
    """
    size = clip_image_size(clip_model)
    mean = image.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    h, w = image.shape[1:]
    total = 0
    for scale in scales:
        rois = scaled_boxes(boxes, scale, h, w)
        parts = []
        for start in range(0, len(rois), batch_size):
            chunk = rois[start : start + batch_size]
            index = torch.zeros(len(chunk), 1, dtype=chunk.dtype, device=chunk.device)
            crops = roi_align(image[None], torch.cat([index, chunk], 1), size, 1.0, 2, True)
            parts.append(F.normalize(clip_model.encode_image((crops - mean) / std).float(), dim=1))
        total = total + torch.cat(parts)
    return F.normalize(total, dim=1)


def proposals_from_model(model, resize, image, device) -> torch.Tensor:
    """Proposals of the model's proposal generator for one image, in original image pixels.

    Args:
        image: (H, W, 3) uint8 array in the model's INPUT.FORMAT; resized with the test-time
            ``resize`` augmentation (as ``DefaultPredictor`` does) before the forward pass.
    """
    height, width = image.shape[:2]
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.transpose(2, 0, 1).copy(), device=device).float()
    images = model.preprocess_image([{"image": tensor, "height": height, "width": width}])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    boxes = proposals[0].proposal_boxes.tensor
    scale_x, scale_y = width / resized.shape[1], height / resized.shape[0]
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default="", help="detector config (dataset input format, RPN)")
    p.add_argument("--dataset", required=True, help="registered training dataset name")
    p.add_argument("--proposals", default="", help="Detectron2 proposal file (.pkl)")
    p.add_argument("--clip-model", default="ViT-B-32", help="ViLD's teacher is CLIP ViT-B/32")
    p.add_argument("--clip-pretrained", default="", help="pretrained tag or local checkpoint")
    p.add_argument("--output", required=True)
    p.add_argument("--max-proposals", type=int, default=300)
    p.add_argument("--scales", default="1.0,1.5", help="crop scales averaged (ViLD: 1x, 1.5x)")
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64, help="crops per CLIP forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logger(name="ovdet_plugin")
    cfg = ovdet_plugin.get_ovdet_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device
    scales = [float(s) for s in args.scales.split(",")]

    dicts = DatasetCatalog.get(args.dataset)
    model = None
    if args.proposals:
        load_proposals_into_dataset(dicts, args.proposals)
    else:
        if not cfg.MODEL.WEIGHTS:
            raise SystemExit("Give --proposals FILE, or a trained detector's MODEL.WEIGHTS")
        model = build_model(cfg).eval()
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        size = cfg.INPUT.MIN_SIZE_TEST
        resize = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
    clip_model = build_clip_model(args.clip_model, args.clip_pretrained, device=args.device)
    dim = clip_model.text_projection.shape[1]
    writer = ViLDEmbeddingWriter(args.output, embed_dim=dim, shard_size=args.shard_size)
    todo = iter_missing(dicts, writer.done_ids())
    logger.info("%d of %d images left to encode", len(todo), len(dicts))
    start = time.perf_counter()
    for d in tqdm(todo, desc="ViLD embeddings", unit="img"):
        rgb = utils.read_image(d["file_name"], format="RGB")
        image = torch.as_tensor(rgb.transpose(2, 0, 1).copy(), device=args.device).float() / 255
        h, w = rgb.shape[:2]
        if model is not None:
            model_input = utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT)
            with torch.no_grad():
                boxes = proposals_from_model(model, resize, model_input, args.device)
        else:
            boxes = torch.as_tensor(
                BoxMode.convert(d["proposal_boxes"], d["proposal_bbox_mode"], BoxMode.XYXY_ABS),
                dtype=torch.float32,
                device=args.device,
            )
        boxes = boxes[: args.max_proposals]
        embeds = crop_embeddings(clip_model, image, boxes, scales, args.batch_size)
        writer.add(d["image_id"], boxes, embeds)
    writer.flush()
    logger.info("Done in %.1f s: %s", time.perf_counter() - start, args.output)


if __name__ == "__main__":
    main()
