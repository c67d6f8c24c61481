#!/usr/bin/env python
"""Detect any typed vocabulary in images and draw the detections with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/lvis/fvlm_RN50_FPN.yaml \
        --vocabulary "cat, remote control, sofa" --input img.jpg --output out/ \
        MODEL.WEIGHTS output/fvlm/model_final.pth MODEL.DEVICE cpu

--input takes image files and/or folders (every .jpg/.jpeg/.png/.bmp inside); one PNG per image is
written to --output. The vocabulary is swapped into the built model (``ovdet_plugin.
set_vocabulary``): no rebuild, no NUM_CLASSES to edit. Runs on CPU or GPU (MODEL.DEVICE).
"""

import argparse
import hashlib
import os

import cv2
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
    add_dataset_arguments(p)  # the config's training vocabulary may be "dataset:NAME"
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logger(name="ovdet_plugin")
    cfg = merge_dataset_arguments(ovdet_plugin.get_ovdet_cfg(args.config_file, args.opts), args)
    # Keep every detection (up to TEST.DETECTIONS_PER_IMAGE); the threshold is applied below, so
    # that the demo can say how many fell below it.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.freeze()
    register_datasets_from_config(cfg)
    predictor = DefaultPredictor(cfg)
    spec = args.vocabulary or cfg.MODEL.OVD.TEST_VOCABULARY or cfg.MODEL.OVD.TRAIN_VOCABULARY
    vocabulary = ovdet_plugin.set_vocabulary(predictor.model, spec, cfg)
    key = hashlib.sha1("\n".join(vocabulary.names).encode()).hexdigest()[:12]
    metadata = MetadataCatalog.get(f"__ovdet_demo_{key}")
    if not metadata.get("thing_classes"):
        metadata.set(thing_classes=list(vocabulary.names))
    os.makedirs(args.output, exist_ok=True)
    images = list_images(args.input)
    for path in tqdm(images, desc="demo", unit="img", disable=len(images) < 2):
        image = read_image(path, format="BGR")
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
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out, drawing.get_image()[:, :, ::-1])
        logger.info("%s: %d detections -> %s", path, len(instances), out)


if __name__ == "__main__":
    main()
