#!/usr/bin/env python
"""Write the text classifier (one CLIP text embedding per class) of a vocabulary to a file.

Examples::

    python tools/dump_text_embeddings.py --vocabulary lvis --model ViT-B-32 \
        --pretrained /path/to/ViT-B-32.pt --prompts vild --output lvis_vild_vitb32.pt
    python tools/dump_text_embeddings.py --vocabulary "cat, remote control, sofa" \
        --model ovdet-tiny-vit --output custom.npy

The file (``.pt`` records the class names and options; ``.npy`` is a bare (K, D) array) is what
``MODEL.OVD.TEXT.EMBEDDINGS_FILE`` takes.

Many processes: ``--num-gpus N`` (and ``--num-machines/--machine-rank/--dist-url``) runs through
Detectron2's ``launch``. The classes are cut into chunks of ``--chunk-size``; chunk ``i`` is
encoded by process ``i mod N`` and written to ``<output>.parts/`` at once, so a killed run
resumes with the chunks not yet written. The main process joins the chunks into ``--output``.
The chunks do not depend on N: any number of processes writes the same embeddings.
``--register-dataset SPEC`` registers your own dataset for ``--vocabulary dataset:NAME``.
"""

import argparse
import json
import os
import shutil
import time

import torch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.prompts import prompt_set_names
from ovdet_plugin.clip.text_embeddings import get_text_embeddings, save_embeddings_file
from ovdet_plugin.data.datasets import add_dataset_arguments, register_dataset_spec
from ovdet_plugin.engine import add_launch_arguments, launch_main
from ovdet_plugin.utils.atomic_io import atomic_write_path
from ovdet_plugin.vocabulary import load_vocabulary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--vocabulary", required=True, help="lvis | coco | coco_ov | dataset:NAME | file | 'a, b'"
    )
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture name")
    p.add_argument("--pretrained", default="", help="pretrained tag or local checkpoint file")
    p.add_argument("--prompts", default="vild", choices=prompt_set_names())
    p.add_argument("--single-prompt", default="a photo of a {}.")
    p.add_argument("--average-synonyms", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed set before the CLIP model is built: without pretrained weights, every process "
        "then has the same random model",
    )
    p.add_argument("--chunk-size", type=int, default=64, help="classes per resumable chunk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache-dir", default=None, help="cache folder ('' disables the cache)")
    p.add_argument("--output", required=True, help="output .pt or .npy file")
    add_launch_arguments(p)
    add_dataset_arguments(p)
    return p.parse_args(argv)


def _options(args) -> dict:
    """What the embeddings depend on; a chunk written with other options is redone."""
    keys = ("vocabulary", "model", "pretrained", "prompts", "single_prompt", "average_synonyms")
    return {k: getattr(args, k) for k in keys}


def _chunk_path(parts: str, i: int, n: int) -> str:
    return os.path.join(parts, f"chunk-{i:05d}-of-{n:05d}.pt")


def _valid_chunk(path: str, options: dict, names) -> bool:
    if not os.path.isfile(path):
        return False
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return json.loads(blob["options_json"]) == options and blob["names"] == list(names)


def main(args):
    """One process of ``launch``: encode this process's chunks; the main process joins them."""
    rank, world = comm.get_rank(), comm.get_world_size()
    logger = setup_logger(name="ovdet_plugin", distributed_rank=rank)
    if not args.output.endswith((".pt", ".npy")):
        raise SystemExit(f"--output must end with .pt or .npy, got {args.output!r}")
    if args.chunk_size < 1:
        raise SystemExit(f"--chunk-size must be at least 1, got {args.chunk_size}")
    for spec in args.register_dataset:
        register_dataset_spec(spec)
    vocabulary = load_vocabulary(args.vocabulary)
    if not args.pretrained and comm.is_main_process():
        logger.warning(
            "No --pretrained: %s gets RANDOM weights, so %s will hold meaningless embeddings "
            "(fine for tests only). Pass --pretrained with a local checkpoint file or an "
            "open_clip tag for real embeddings.",
            args.model,
            args.output,
        )
    options = _options(args)
    parts = args.output + ".parts"
    os.makedirs(parts, exist_ok=True)
    n = (len(vocabulary) + args.chunk_size - 1) // args.chunk_size
    chunks = [list(range(i * args.chunk_size, min((i + 1) * args.chunk_size, len(vocabulary))))
              for i in range(n)]  # fmt: skip
    mine = [i for i in range(rank, n, world)]
    todo = [
        i
        for i in mine
        if not _valid_chunk(
            _chunk_path(parts, i, n), options, [vocabulary.names[k] for k in chunks[i]]
        )
    ]
    logger.info(
        "%d classes in %d chunks; %d of this process's %d chunks left%s",
        len(vocabulary),
        n,
        len(todo),
        len(mine),
        f" (process {rank} of {world})" if world > 1 else "",
    )
    start = time.perf_counter()
    if todo:
        torch.manual_seed(args.seed)
        model = build_clip_model(args.model, args.pretrained, device=args.device)
        tokenizer = get_clip_tokenizer(args.model)
    for i in todo:
        keep = [False] * len(vocabulary)
        for k in chunks[i]:
            keep[k] = True
        subset = vocabulary.subset(keep)
        emb = get_text_embeddings(
            model,
            tokenizer,
            subset,
            prompts=args.prompts,
            single_prompt=args.single_prompt,
            average_synonyms=args.average_synonyms,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            show_progress=False,
        )
        blob = {"embeddings": emb, "names": list(subset.names), "options_json": json.dumps(options)}
        with atomic_write_path(_chunk_path(parts, i, n)) as tmp:
            torch.save(blob, tmp)
    comm.synchronize()
    if not comm.is_main_process():
        return
    emb = torch.cat(
        [torch.load(_chunk_path(parts, i, n), weights_only=True)["embeddings"] for i in range(n)]
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
    shutil.rmtree(parts)
    logger.info(
        "Wrote %s: %d classes x %d dims (%.1f s)",
        args.output,
        emb.shape[0],
        emb.shape[1],
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    launch_main(main, parse_args())
