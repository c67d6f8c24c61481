#!/usr/bin/env python
"""Write the text classifier (one CLIP text embedding per class) of a vocabulary to a file.

Examples::

    python tools/dump_text_embeddings.py --vocabulary lvis --model ViT-B-32 \
        --pretrained /path/to/ViT-B-32.pt --prompts vild --output lvis_vild_vitb32.pt
    python tools/dump_text_embeddings.py --vocabulary "cat, remote control, sofa" \
        --model ovdet-tiny-vit --output custom.npy

The file (``.pt`` records the class names and options; ``.npy`` is a bare (K, D) array) is what
``MODEL.OVD.TEXT.EMBEDDINGS_FILE`` takes.
"""

import argparse
import time

from detectron2.utils.logger import setup_logger

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.prompts import prompt_set_names
from ovdet_plugin.clip.text_embeddings import get_text_embeddings, save_embeddings_file
from ovdet_plugin.vocabulary import load_vocabulary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vocabulary", required=True, help="lvis | coco | coco_ov | file | 'a, b, c'")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture name")
    p.add_argument("--pretrained", default="", help="pretrained tag or local checkpoint file")
    p.add_argument("--prompts", default="vild", choices=prompt_set_names())
    p.add_argument("--single-prompt", default="a photo of a {}.")
    p.add_argument("--average-synonyms", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="cache folder ('' disables the cache)")
    p.add_argument("--output", required=True, help="output .pt or .npy file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logger = setup_logger(name="ovdet_plugin")
    if not args.output.endswith((".pt", ".npy")):
        raise SystemExit(f"--output must end with .pt or .npy, got {args.output!r}")
    vocabulary = load_vocabulary(args.vocabulary)
    if not args.pretrained:
        logger.warning(
            "No --pretrained: %s gets RANDOM weights, so %s will hold meaningless embeddings "
            "(fine for tests only). Pass --pretrained with a local checkpoint file or an "
            "open_clip tag for real embeddings.",
            args.model,
            args.output,
        )
    model = build_clip_model(args.model, args.pretrained, device=args.device)
    start = time.perf_counter()
    emb = get_text_embeddings(
        model,
        get_clip_tokenizer(args.model),
        vocabulary,
        prompts=args.prompts,
        single_prompt=args.single_prompt,
        average_synonyms=args.average_synonyms,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
    )
    save_embeddings_file(
        args.output,
        emb,
        vocabulary,
        model=args.model,
        pretrained=args.pretrained,
        prompts=args.prompts,
        average_synonyms=args.average_synonyms,
    )
    logger.info(
        "Wrote %s: %d classes x %d dims (%.1f s)",
        args.output,
        emb.shape[0],
        emb.shape[1],
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
