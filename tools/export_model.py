#!/usr/bin/env python
"""Export a trained open-vocabulary detector, its vocabulary baked in, to TorchScript (traced
through Detectron2's ``TracingAdapter``) and/or ONNX, and check each export against eager PyTorch
on the CPU (ONNX Runtime for ONNX): same detections, |difference| <= 1e-4 + 1e-4 |eager|.

    python tools/export_model.py --config-file configs/lvis/fvlm_RN50_FPN.yaml \\
        --vocabulary "cat, remote control, sofa" --format torchscript onnx \\
        --sample-image photo.jpg --output exported/fvlm MODEL.WEIGHTS output/model_final.pth

Writes ``model.ts`` / ``model.onnx`` and ``vocabulary.json`` (the baked class names, index =
``pred_classes``, and the output names). A new vocabulary needs a new export. CLIP ViT backbones
(F-ViT, RO-ViT) need ``MODEL.OVD.BACKBONE.SFP_SQUARE_PAD`` (see ``ovdet_plugin/export.py``).
The export takes one image, resized by the test transform, in ``INPUT.FORMAT``, as a (3, H, W)
float tensor; it returns boxes, scores, classes (and mask probabilities) before rescaling to the
original image.
"""

import argparse
import logging
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import ovdet_plugin
from ovdet_plugin.export import (
    compare_outputs,
    export_onnx,
    export_torchscript,
    mha_fast_path_off,
    run_onnx,
    trace,
    write_vocabulary,
)

FORMATS = ("torchscript", "onnx")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the model's YAML config")
    parser.add_argument(
        "--vocabulary",
        default="",
        help="the vocabulary to bake in (any MODEL.OVD.TEST_VOCABULARY value); default: the "
        "config's test vocabulary",
    )
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument(
        "--sample-image",
        default="",
        help="trace input (resized by the test transform); default: a random image of "
        "INPUT.MIN_SIZE_TEST x INPUT.MIN_SIZE_TEST",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def load_image(cfg, path: str) -> torch.Tensor:
    """(3, H, W) float image in ``INPUT.FORMAT``, resized as at test time."""
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    if path:
        image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    else:
        g = torch.Generator().manual_seed(0)
        side = cfg.INPUT.MIN_SIZE_TEST
        image = (torch.rand(side, side, 3, generator=g) * 255).to(torch.uint8).numpy()
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1).copy())


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = setup_logger(name="ovdet")
    opts = list(args.opts)
    if "MODEL.DEVICE" not in opts[::2]:
        opts += ["MODEL.DEVICE", "cpu"]  # the check runs on the CPU (ONNX Runtime)
    cfg = ovdet_plugin.get_ovdet_cfg(args.config_file, opts)
    cfg.freeze()
    with ovdet_plugin.keep_text_encoder(bool(args.vocabulary)) as kept:
        model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights.")
    model.eval()
    if args.vocabulary:
        ovdet_plugin.set_vocabulary(model, args.vocabulary, cfg, encoder=kept.encoder)
    kept.release()
    image = load_image(cfg, args.sample_image)
    exported = trace(model, image)
    os.makedirs(args.output, exist_ok=True)
    logger.info("Vocabulary (baked in): %s", write_vocabulary(exported, args.output))
    with torch.no_grad(), mha_fast_path_off():
        reference = exported.adapter(image)
    failed = False
    for fmt in args.format:
        path = os.path.join(args.output, "model.ts" if fmt == "torchscript" else "model.onnx")
        try:
            if fmt == "torchscript":
                export_torchscript(exported, path)
                with torch.no_grad():
                    outputs = torch.jit.load(path)(image)
            else:
                export_onnx(exported, path)
                outputs = run_onnx(path, image)
            diffs = compare_outputs(reference, outputs, exported.output_names)
            logger.info("%s equals eager PyTorch: max |difference| %s", fmt, diffs)
        except AssertionError as e:
            failed = True
            logger.error("%s export differs from eager PyTorch: %s", fmt, e)
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
