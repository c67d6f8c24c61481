#!/usr/bin/env python
"""Detect any typed vocabulary in images and draw the detections with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/lvis/fvlm_RN50_FPN.yaml \
        --vocabulary "cat, remote control, sofa" --input img.jpg --output out/ \
        MODEL.WEIGHTS output/fvlm/model_final.pth MODEL.DEVICE cpu

--input takes image files and/or folders (every .jpg/.jpeg/.png/.bmp inside); one PNG per image is
written to --output (``name.png``; ``name_2.png``, ... when two inputs share a name). A --vocabulary
other than the config's is swapped into the built model (``ovdet_plugin.set_vocabulary``, with the
text encoder of the build, kept by ``ovdet_plugin.keep_text_encoder`` only when --vocabulary is
given and released after the swap): no rebuild, no second CLIP, no NUM_CLASSES to edit. Runs on
CPU or GPU (MODEL.DEVICE).

Checked before the model is built: MODEL.WEIGHTS is set (or --random-weights), the device exists,
--output is writable, every input exists. An unreadable image is reported and skipped; the exit
code is then 1. A typed --vocabulary other than the training one is encoded even when
MODEL.OVD.TEXT.EMBEDDINGS_FILE is set (that file holds the training vocabulary's rows only).

--save-detections also writes the drawn detections to ``--output``/detections.json (written
atomically), one record per drawn box: ``{"file_name": input path, "picture": PNG name,
"category": vocabulary name, "bbox": [x, y, w, h] in input-image pixels, "score"}``. It is what
the pictures show, in the form ``ovdet_plugin.evaluation.label_precision`` scores once the
names are mapped to a dataset's category ids.
"""

import argparse
import hashlib
import json
import os
import re
import sys

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

import ovdet_plugin
from ovdet_plugin.data.datasets import (
    add_dataset_arguments,
    merge_dataset_arguments,
    register_datasets_from_config,
)
from ovdet_plugin.engine.checks import check_device, check_writable_dir
from ovdet_plugin.modeling.vocabulary_swap import get_test_vocabulary
from ovdet_plugin.utils.atomic_io import atomic_write_path
from ovdet_plugin.vocabulary import load_vocabulary

# a config override key such as MODEL.WEIGHTS (what follows --input by mistake)
CONFIG_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_SUFFIXES)
            )
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise SystemExit(f"--input {item!r} is neither an image file nor a folder")
    if not paths:
        raise SystemExit(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in {inputs}")
    return paths


def output_names(paths):
    """One PNG name per input: its base name, with ``_2``, ``_3``, ... for repeated names."""
    seen, names = {}, []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem + (f"_{seen[stem]}" if seen[stem] > 1 else "") + ".png")
    return names


def read_image_bgr(path):
    """(H, W, 3) uint8 BGR. 16-bit PNG/TIFF are scaled to 8 bits (Detectron2's reader would
    saturate them); other files go through Detectron2's ``read_image`` (EXIF orientation)."""
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if raw is not None and raw.dtype == np.uint16:
        image = (raw.astype(np.float32) / 257.0).round().astype(np.uint8)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return image
    return read_image(path, format="BGR")


def detection_records(path, picture, instances, names):
    """The drawn ``instances`` of one image as JSON records (``--save-detections``): ``bbox`` is
    XYWH in input-image pixels, ``category`` the vocabulary name of the predicted class."""
    boxes = instances.pred_boxes.tensor.tolist()
    return [
        {
            "file_name": path,
            "picture": picture,
            "category": names[int(c)],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(s),
        }
        for (x0, y0, x1, y1), c, s in zip(boxes, instances.pred_classes, instances.scores)
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument(
        "--vocabulary", default="", help="'a, b, c' | lvis | coco | file ('' = config's)"
    )
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--output", required=True, help="folder for the PNG pictures")
    p.add_argument("--confidence-threshold", type=float, default=0.3)
    p.add_argument("--top-k", type=int, default=0, help="draw at most this many (0: all)")
    p.add_argument("--scale", type=float, default=1.0, help="picture size / image size")
    p.add_argument(
        "--save-detections",
        action="store_true",
        help="also write the drawn detections to OUTPUT/detections.json",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="allow running without MODEL.WEIGHTS (an untrained detector: tests only)",
    )
    add_dataset_arguments(p)  # the config's training vocabulary may be "dataset:NAME"
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    # "--input a.jpg MODEL.WEIGHTS w.pth": argparse gives the overrides to --input
    for i, item in enumerate(args.input):
        if CONFIG_KEY_RE.match(item) and not os.path.exists(item):
            args.opts = args.input[i:] + list(args.opts)
            args.input = args.input[:i]
            break
    if not args.input:
        p.error("--input needs at least one image file or folder before the config overrides")
    return args


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logger(name="ovdet_plugin")
    cfg = merge_dataset_arguments(ovdet_plugin.get_ovdet_cfg(args.config_file, args.opts), args)
    # Keep every detection (up to TEST.DETECTIONS_PER_IMAGE); the threshold is applied below, so
    # that the demo can say how many fell below it.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    # checks before the model is built
    images = list_images(args.input)
    if not cfg.MODEL.WEIGHTS and not args.random_weights:
        raise SystemExit(
            "MODEL.WEIGHTS is not set: the demo would draw an untrained detector's boxes. Add "
            "MODEL.WEIGHTS path/to/model_final.pth at the end of the command (or --random-weights "
            "to run an untrained model on purpose)."
        )
    check_device(cfg.MODEL.DEVICE)
    check_writable_dir(args.output, "--output")
    register_datasets_from_config(cfg)  # the vocabulary may be "dataset:NAME"
    typed = load_vocabulary(args.vocabulary) if args.vocabulary else None
    cfg.freeze()
    # the build resolves and encodes the config's vocabulary; only a typed vocabulary may need
    # its text encoder afterwards (a swap with the build's text tower: no second CLIP)
    with ovdet_plugin.keep_text_encoder(typed is not None) as kept:
        predictor = DefaultPredictor(cfg)
    vocabulary = get_test_vocabulary(predictor.model)
    if typed is not None and typed.names != vocabulary.names:
        if cfg.MODEL.OVD.TEXT.EMBEDDINGS_FILE:
            # the file holds the config's classes: its rows must not be drawn under new names
            logger.warning(
                "--vocabulary differs from the config's vocabulary: encoding it with "
                "MODEL.OVD.CLIP instead of reading MODEL.OVD.TEXT.EMBEDDINGS_FILE %s.",
                cfg.MODEL.OVD.TEXT.EMBEDDINGS_FILE,
            )
        vocabulary = ovdet_plugin.set_vocabulary(predictor.model, typed, cfg, encoder=kept.encoder)
    kept.release()  # the images need no text tower
    key = hashlib.sha1("\n".join(vocabulary.names).encode()).hexdigest()[:12]
    metadata = MetadataCatalog.get(f"__ovdet_demo_{key}")
    if not metadata.get("thing_classes"):
        metadata.set(thing_classes=list(vocabulary.names))
    failed, records = [], []
    names = output_names(images)
    for path, name in tqdm(zip(images, names), desc="demo", unit="img", total=len(images),
                           disable=len(images) < 2):  # fmt: skip
        try:
            image = read_image_bgr(path)
        except Exception as e:  # one unreadable image must not stop the others
            logger.error("%s: cannot read the image (%s: %s); skipped.", path, type(e).__name__, e)
            failed.append(path)
            continue
        instances = predictor(image)["instances"].to("cpu")
        below = instances[instances.scores < args.confidence_threshold]
        instances = instances[instances.scores >= args.confidence_threshold]
        if len(instances) == 0 and len(below):
            logger.info(
                "%s: no detection scored >= --confidence-threshold %g; %d fell below it "
                "(highest score %.3f). Lower --confidence-threshold to draw them.",
                path,
                args.confidence_threshold,
                len(below),
                float(below.scores.max()),
            )
        if args.top_k > 0:  # highest scores first
            instances = instances[instances.scores.argsort(descending=True)[: args.top_k]]
        visualizer = Visualizer(image[:, :, ::-1], metadata, scale=args.scale)
        drawing = visualizer.draw_instance_predictions(instances)
        out = os.path.join(args.output, name)
        if not cv2.imwrite(out, drawing.get_image()[:, :, ::-1]):
            logger.error("%s: could not write %s (disk full or folder removed?)", path, out)
            failed.append(path)
            continue
        logger.info("%s: %d detections -> %s", path, len(instances), out)
        if args.save_detections:
            records += detection_records(path, name, instances, vocabulary.names)
    if args.save_detections:
        saved = os.path.join(args.output, "detections.json")
        with atomic_write_path(saved) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(records, f)
        logger.info("%d drawn detections -> %s", len(records), saved)
    if failed:
        logger.error("%d of %d image(s) failed: %s", len(failed), len(images), ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
