#!/usr/bin/env python
"""Precompute ViLD-image distillation targets (methods §1.4-1.5): for every training image, up to
--max-proposals proposals and the CLIP image embedding of each proposal's crop.

Proposals come from a Detectron2 proposal file (``--proposals file.pkl``, the format of
``DATASETS.PROPOSAL_FILES_TRAIN``) or from a trained model's proposal generator
(``--config-file`` + ``MODEL.WEIGHTS``, e.g. an RPN trained on base classes). Each box is cropped
at 1x and 1.5x its size (``--scales``), resized to the CLIP tower's input size, encoded, L2-
normalised; the scales are averaged and renormalised. Results go to --output as shards that a
later run resumes from (images already indexed are skipped). The index records the dataset
(name, image count, a digest of the ids and file names) and each image's file name: training
refuses embeddings computed for another dataset, and a folder of another dataset is not resumed.

Many processes: ``--num-gpus N`` (and ``--num-machines/--machine-rank/--dist-url``) runs the tool
through Detectron2's ``launch``; process ``r`` of ``w`` takes images ``r, r + w, ...`` of the
dataset and writes its own shards; the main process merges the indexes at the end. Without a GPU
the processes run on the CPU (gloo). An image that fails (unreadable, no proposals, ...) is
skipped, recorded in the index with its reason and reported at the end (count and names); what
was encoded is always written. A re-run encodes only the images not yet done, failed ones
included.

Example::

    python tools/precompute_vild_embeddings.py --config-file configs/lvis/vild_R50_FPN.yaml \
        --dataset lvis_v1_train_ov --clip-model ViT-B-32 --clip-pretrained /path/ViT-B-32.pt \
        --output datasets/vild_embeddings/lvis_v1_train_ov --num-gpus 8 \
        MODEL.WEIGHTS output/rpn/model_final.pth
"""

import argparse
import os
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import load_proposals_into_dataset
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

import ovdet_plugin
from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.clip.crops import crop_embeddings
from ovdet_plugin.data.datasets import (
    add_dataset_arguments,
    merge_dataset_arguments,
    register_datasets_from_config,
)
from ovdet_plugin.data.vild_embeddings import (
    ViLDEmbeddingWriter,
    dataset_record,
    iter_missing,
    merge_index_parts,
)
from ovdet_plugin.engine import add_launch_arguments, launch_main


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
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed set before the CLIP model is built: without pretrained weights, every process "
        "then has the same random model",
    )
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64, help="crops per CLIP forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_launch_arguments(p)
    add_dataset_arguments(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def _boxes(d, model, resize, cfg, device) -> torch.Tensor:
    """The image's proposals (XYXY, original pixels): from the model's RPN or the dict."""
    if model is not None:
        model_input = utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT)
        with torch.no_grad():
            return proposals_from_model(model, resize, model_input, device)
    return torch.as_tensor(
        BoxMode.convert(d["proposal_boxes"], d["proposal_bbox_mode"], BoxMode.XYXY_ABS),
        dtype=torch.float32,
        device=device,
    ).reshape(-1, 4)


def encode_share(args, cfg, dicts, writer, model, resize, clip_model, logger) -> list:
    """Encode the images of ``dicts`` not yet in ``writer``; returns the failures as
    ``[(file_name, reason)]``. Pending results are flushed even when the loop is interrupted."""
    scales = [float(s) for s in args.scales.split(",")]
    failures = []
    try:
        for d in tqdm(dicts, desc="ViLD embeddings", unit="img", disable=comm.get_rank() > 0):
            try:
                boxes = _boxes(d, model, resize, cfg, args.device)[: args.max_proposals]
                if len(boxes) == 0:
                    raise ValueError("no proposals")
                rgb = utils.read_image(d["file_name"], format="RGB")
                image = torch.as_tensor(rgb.transpose(2, 0, 1).copy(), device=args.device)
                embeds = crop_embeddings(
                    clip_model, image.float() / 255, boxes, scales, args.batch_size
                )
            except Exception as e:  # one bad image must not cost the others' work
                reason = f"{type(e).__name__}: {e}"
                logger.warning("Skipping %s (image %s): %s", d["file_name"], d["image_id"], reason)
                writer.add_failure(d["image_id"], reason)
                failures.append((d["file_name"], reason))
                continue
            writer.add(d["image_id"], boxes, embeds, file_name=d["file_name"])
    finally:
        writer.flush()
    return failures


def main(args):
    """One process of ``launch``: encode this process's share of the dataset."""
    rank, world = comm.get_rank(), comm.get_world_size()
    logger = setup_logger(name="ovdet_plugin", distributed_rank=rank)
    cfg = merge_dataset_arguments(ovdet_plugin.get_ovdet_cfg(args.config_file, args.opts), args)
    cfg.MODEL.DEVICE = args.device
    register_datasets_from_config(cfg)

    dicts = DatasetCatalog.get(args.dataset)
    model = resize = None
    if args.proposals:
        load_proposals_into_dataset(dicts, args.proposals)
    else:
        if not cfg.MODEL.WEIGHTS:
            raise SystemExit("Give --proposals FILE, or a trained detector's MODEL.WEIGHTS")
        model = build_model(cfg).eval()
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        size = cfg.INPUT.MIN_SIZE_TEST
        resize = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
    torch.manual_seed(args.seed)
    clip_model = build_clip_model(args.clip_model, args.clip_pretrained, device=args.device)
    dim = clip_model.text_projection.shape[1]
    writer = ViLDEmbeddingWriter(
        args.output,
        embed_dim=dim,
        shard_size=args.shard_size,
        part=f"rank{rank}",
        dataset=dataset_record(args.dataset, dicts),  # checked when the folder is trained on
    )
    share = dicts[rank::world]  # the same images for a rank whatever has been done
    todo = iter_missing(share, writer.done_ids())
    logger.info(
        "%d of %d images left to encode%s",
        len(todo),
        len(share),
        f" (process {rank} of {world}; {len(dicts)} in all)" if world > 1 else "",
    )
    start = time.perf_counter()
    failures = encode_share(args, cfg, todo, writer, model, resize, clip_model, logger)
    all_failures = [f for part in comm.all_gather(failures) for f in part]
    if comm.is_main_process():
        merged = merge_index_parts(args.output)
        n_done = sum(len(ids) for ids in merged["shards"].values())
        logger.info(
            "Done in %.1f s: %d of %d images encoded in %s",
            time.perf_counter() - start,
            n_done,
            len(dicts),
            args.output,
        )
        if all_failures:
            names = ", ".join(os.path.basename(f) for f, _ in all_failures[:20])
            logger.warning(
                "Skipped %d images (a re-run retries them; reasons above and in %s): %s%s",
                len(all_failures),
                os.path.join(args.output, "index.json"),
                names,
                " ..." if len(all_failures) > 20 else "",
            )


if __name__ == "__main__":
    args = parse_args()
    launch_main(main, args)
