"""A short recipe probe for the tiny CLIP (not the shipped recipe): caption crops rendered on the
fly (a new scene per sample, never repeated), a horizontal flip, the multi-positive softmax, and
the zero-shot crop accuracy of a generated split every ``--every`` steps. It answers "does this
data/loss learn at all, and how fast" without writing a 100k-image caption folder first; a
recipe that works goes into ``configs/pretraining/tiny_synthetic.yaml`` and is trained with
``tools/pretrain_rovit.py`` (the shipped checkpoint is). Single process.

    python benchmarks/tiny_clip_probe.py --eval DIR --steps 3000 [--cpe 16] --out probe.pt

``DIR`` is a generated dataset folder (its val split is scored; use another seed than the
benchmark's). The saved file is an open_clip state dict for ``build_clip_model``.
"""

import argparse
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.crops import normalize_for_clip, square_resize, uint8_to_unit
from ovdet_plugin.data.synthetic.generator import SCENE_CROP_CAPTION, crop_with_context
from ovdet_plugin.data.synthetic.render import compose_scene
from ovdet_plugin.data.synthetic.shapes import OBJECT_KINDS
from ovdet_plugin.evaluation.zero_shot_crops import format_accuracy, load_crops, zero_shot_accuracy
from ovdet_plugin.pretraining.contrastive_losses import multipositive_softmax_loss
from ovdet_plugin.pretraining.cropped_pos_embed import CroppedPosEmbed
from ovdet_plugin.pretraining.rovit import RegionAwareCLIP


class RenderedCrops(IterableDataset):
    """Endless (crop, kind index) pairs (the index into ``OBJECT_KINDS``, 0-based): a 128-px
    scene of 1..max_objects random kinds, one crop per placed object (``crop_with_context``),
    square-resized, flipped with probability 0.5."""

    def __init__(self, args):
        self.args = args

    def __iter__(self):
        a = self.args
        info = get_worker_info()
        rng = np.random.default_rng([a.seed, 7, info.id if info else 0])
        while True:
            kinds = rng.integers(0, len(OBJECT_KINDS), int(rng.integers(1, a.max_objects + 1)))
            objects = [(OBJECT_KINDS[k], int(k)) for k in kinds]
            img, placed = compose_scene(rng, (128, 128), objects, tuple(a.size_range))
            for o in placed:
                crop = crop_with_context(rng, img, o.mask, tuple(a.context), a.jitter)
                if crop is None:
                    continue
                crop = square_resize(crop, a.size)
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                yield np.ascontiguousarray(crop), o.category_id


def collate(batch):
    images = normalize_for_clip(uint8_to_unit(np.stack([b[0] for b in batch])))
    return images, torch.tensor([b[1] for b in batch])


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine to 0 at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * t))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", required=True, help="generated dataset folder (its val is scored)")
    p.add_argument("--model", default="ovdet-tiny-vit-avg")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--size", type=int, default=64, help="crop side (the model's input size)")
    p.add_argument("--context", type=float, nargs=2, default=(0.0, 0.4))
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--size-range", type=float, nargs=2, default=(0.15, 0.6))
    p.add_argument("--max-objects", type=int, default=5)
    p.add_argument("--cpe", type=int, default=0, help="CPE upsampled grid (0: no CPE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = get_clip_tokenizer(args.model)
    model = RegionAwareCLIP(
        clip_model=build_clip_model(args.model, ""),
        tokenizer=tokenizer,
        cpe=CroppedPosEmbed(up_size=args.cpe) if args.cpe else None,
        loss="multipos",
        gather=False,
    )
    crops = load_crops(args.eval, args.size)
    texts = tokenizer([SCENE_CROP_CAPTION.format(k.name) for k in OBJECT_KINDS])
    params = list(model.named_parameters())
    decay = [q for n, q in params if q.ndim >= 2 and "embedding" not in n]
    no_decay = [q for n, q in params if not (q.ndim >= 2 and "embedding" not in n)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loader = DataLoader(
        RenderedCrops(args), batch_size=args.batch_size, num_workers=1, collate_fn=collate
    )
    start = time.time()
    for step, (images, ids) in zip(range(args.steps), loader):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        model.train()
        loss = multipositive_softmax_loss(
            model.encode_image(images),
            model.encode_text(texts[ids]),
            model.clip.logit_scale.exp().clamp(max=100.0),
            ids,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            per_step = (time.time() - start) / (step + 1)
            print(f"step {step} loss {loss.item():.3f} {per_step:.2f} s/step", flush=True)
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            acc = zero_shot_accuracy(model.clip, tokenizer, crops, encode_image=model.encode_image)
            print(
                f"eval @{step + 1} {format_accuracy(acc)} t={time.time() - start:.0f}s", flush=True
            )
            if args.out:
                torch.save(model.clip.state_dict(), args.out)


if __name__ == "__main__":
    main()
