#!/usr/bin/env python
"""Text-side demo: build a CLIP model, embed a typed vocabulary with a prompt ensemble (cached),
and print the nearest class names for a few typed queries.

The default tiny model is randomly initialised (no weights can be downloaded here), so its
ranking is arbitrary: the run shows the pipeline (prompt ensemble, encoding, cache). Pass
``--model ViT-B-32 --pretrained /path/ViT-B-32.pt`` for real CLIP semantics. The second encoding
of the same vocabulary comes from the on-disk cache.

Example::

    python tools/demo_text.py --vocabulary "cat, remote control, sofa" --queries "a remote, couch"
"""

import argparse
import time

import torch
import torch.nn.functional as F
from detectron2.utils.logger import setup_logger

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.prompts import build_prompts, normalize_class_name, prompt_set_names
from ovdet_plugin.clip.text_embeddings import get_text_embeddings
from ovdet_plugin.data.datasets import add_dataset_arguments, register_dataset_spec
from ovdet_plugin.vocabulary import load_vocabulary

DEFAULT_VOCABULARY = (
    "cat, dog, remote control, sofa, television set, coffee mug, teapot, bicycle, traffic light, "
    "umbrella, banana, pizza, laptop computer, teddy bear, fire hydrant"
)
DEFAULT_QUERIES = "a remote, a tv set, the teddy, pizza slice, fire truck"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--vocabulary",
        default=DEFAULT_VOCABULARY,
        help="lvis | coco | dataset:NAME | file | 'a, b'",
    )
    p.add_argument("--queries", default=DEFAULT_QUERIES, help="comma-separated free-text queries")
    p.add_argument("--model", default="ovdet-tiny-vit", help="open_clip architecture name")
    p.add_argument("--pretrained", default="", help="pretrained tag or local checkpoint file")
    p.add_argument("--prompts", default="vild", choices=prompt_set_names())
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seed for a randomly initialised model")
    p.add_argument("--cache-dir", default=None, help="cache folder ('' disables the cache)")
    add_dataset_arguments(p)  # for --vocabulary dataset:NAME with your own dataset
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="ovdet_plugin")
    torch.manual_seed(args.seed)
    for spec in args.register_dataset:
        register_dataset_spec(spec)
    vocabulary = load_vocabulary(args.vocabulary)
    model = build_clip_model(args.model, args.pretrained)
    tokenizer = get_clip_tokenizer(args.model)
    weights = args.pretrained or f"random init (seed {args.seed})"
    print(f"CLIP model: {args.model}, weights: {weights}")
    if not args.pretrained:
        print(
            "  note: random weights, so the ranking below is arbitrary; "
            "pass --pretrained for a real CLIP"
        )
    print(
        f"Vocabulary: {len(vocabulary)} classes from {vocabulary.source!r}, prompts={args.prompts}"
    )
    example = build_prompts(normalize_class_name(vocabulary.names[0]), args.prompts)
    print(f"  {len(example)} prompts per class, e.g. {example[0]!r} ... {example[-1]!r}")

    timings = []
    for _ in range(2):  # the second call is served from the cache
        start = time.perf_counter()
        emb = get_text_embeddings(
            model, tokenizer, vocabulary, prompts=args.prompts, cache_dir=args.cache_dir
        )
        timings.append(time.perf_counter() - start)
    first, second = timings[0] * 1000, timings[1] * 1000
    print(
        f"Text classifier {tuple(emb.shape)}: first call {first:.0f} ms (encoded, or from an "
        f"earlier run's cache), second call {second:.1f} ms (cache)"
    )

    queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    with torch.no_grad():
        q = F.normalize(model.encode_text(tokenizer(queries)).float(), dim=-1)
    sims = q @ emb.t()
    k = min(args.topk, len(vocabulary))
    for query, row in zip(queries, sims):
        values, idx = row.topk(k)
        best = ", ".join(
            f"{vocabulary.names[i]} ({v:.3f}, {vocabulary.splits[i]})"
            for v, i in zip(values.tolist(), idx.tolist())
        )
        print(f"  {query!r:>22} -> {best}")


if __name__ == "__main__":
    main()
