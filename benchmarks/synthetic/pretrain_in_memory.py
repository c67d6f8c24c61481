"""Tiny-CLIP image-text pretraining held in memory: the generated-data benchmark's pretraining
step (``tools/run_synthetic_benchmark.py``) and ``benchmarks/pretrain_tiny_clip.py``.

The model code is the project's RO-ViT code: ``RegionAwareCLIP`` (its image / text encoders,
optional cropped positional embedding, focal or softmax loss) around an open_clip architecture
from ``build_clip_model``. What this loop adds, to fit CPU minutes on a 2-core machine: every
caption image is decoded once into memory and every caption variant tokenised once; each step
draws one of an image's caption variants at random. Two data choices from the measurements in
``benchmarks/ZERO_SHOT_NOTES.md``: ``--plain-captions`` (only the generator's variants without
colour / size / position words: those are a shortcut the category prompts do not contain) and
``--loss multipos`` (softmax with every pair of equal captions in a batch as positives, so
repeated captions are not false negatives). Zero-shot crop accuracy is measured every
``--eval-every`` steps. Single process: for DDP pretraining use ``tools/pretrain_rovit.py``.

    python benchmarks/pretrain_tiny_clip.py --dataset DIR --model-name ovdet-tiny-vit-avg \\
        --plain-captions --loss multipos --steps 10000 --out tiny_clip.pt
"""

import argparse
import json
import math
import os
import random
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ovdet_plugin.clip import CLIP_MEAN, CLIP_STD, build_clip_model, get_clip_tokenizer
from ovdet_plugin.data.synthetic.crops import load_captions
from ovdet_plugin.data.synthetic.render import COLOR_NAMES
from ovdet_plugin.evaluation.zero_shot_crops import format_accuracy, load_crops, zero_shot_accuracy
from ovdet_plugin.pretraining.contrastive_losses import multipositive_softmax_loss
from ovdet_plugin.pretraining.cropped_pos_embed import CroppedPosEmbed
from ovdet_plugin.pretraining.rovit import RegionAwareCLIP
from ovdet_plugin.utils.atomic_io import atomic_write_path

__all__ = ["build_argument_parser", "main", "load_pretrain_set", "pretrain_in_memory"]

_ATTRIBUTE_WORDS = set(COLOR_NAMES) | {"small", "big", "left", "right", "top", "bottom", "middle"}


def is_plain(caption: str) -> bool:
    """Whether a caption names only categories and counts (no colour, size or position word)."""
    words = set(caption.replace(",", " ").replace(".", " ").replace("!", " ").split())
    return not words & _ATTRIBUTE_WORDS


def random_resized_crops(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per image: a random crop of 50-100% of the area (aspect 3/4-4/3), resized back to the
    input size, flipped horizontally half of the time. (B, 3, S, S) uint8 -> same shape."""
    b, _, s, _ = images.shape
    out = torch.empty_like(images)
    r = torch.rand(b, 5, generator=gen)
    for i in range(b):
        area = s * s * (0.5 + 0.5 * r[i, 0].item())
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[i, 1].item())
        w = min(s, max(4, round(math.sqrt(area * aspect))))
        h = min(s, max(4, round(math.sqrt(area / aspect))))
        y = int(r[i, 2].item() * (s - h + 1))
        x = int(r[i, 3].item() * (s - w + 1))
        crop = images[i : i + 1, :, y : y + h, x : x + w].float()
        crop = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False)
        if r[i, 4].item() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0].round().clamp(0, 255).to(images.dtype)
    return out


def save(model: RegionAwareCLIP, path: str) -> None:
    """The open_clip state dict (loadable by ``build_clip_model(name, path)``). A logit bias
    added for the focal loss only shifts every logit: it is left out (not in the architecture,
    not needed zero-shot)."""
    state = {k: v for k, v in model.clip.state_dict().items() if k != "logit_bias"}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write_path(path) as tmp:
        torch.save(state, tmp)


def load_pretrain_set(
    dataset_dir: str, size: int, tokenizer, max_images: int = 0, plain: bool = False
) -> Dict:
    records = load_captions(dataset_dir)
    if max_images:
        records = records[:max_images]
    imgs = np.empty((len(records), size, size, 3), dtype=np.uint8)
    for i, r in enumerate(records):
        bgr = cv2.imread(os.path.join(dataset_dir, r["file_name"]), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[0] != size or rgb.shape[1] != size:
            interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (size, size), interpolation=interp)
        imgs[i] = rgb
    texts: List[str] = []
    owner: List[int] = []
    for i, r in enumerate(records):
        variants = r.get("captions") or [r["caption"]]
        if plain:  # the generator's variants without attributes; all of them if none is plain
            variants = [c for c in variants if is_plain(c)] or variants
        for c in variants:
            texts.append(c)
            owner.append(i)
    ids = {t: k for k, t in enumerate(sorted(set(texts)))}
    tokens = tokenizer(texts)
    per_image: List[List[int]] = [[] for _ in records]
    for j, i in enumerate(owner):
        per_image[i].append(j)
    return {
        "images": torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),  # uint8 NCHW
        "tokens": tokens,
        "caption_ids": torch.tensor([ids[t] for t in texts]),
        "per_image": per_image,
        "num_distinct": len(ids),
        "num_texts": len(texts),
    }


def build_argument_parser() -> argparse.ArgumentParser:
    """The loop's options (``benchmarks/pretrain_tiny_clip.py --help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--eval-dataset", default="", help="crops for evaluation (default: --dataset)")
    p.add_argument("--model-name", default="ovdet-tiny-vit")
    p.add_argument("--init", default="", help="initial open_clip checkpoint ('' = random)")
    p.add_argument("--loss", default="focal", choices=["focal", "softmax", "multipos"])
    p.add_argument("--pooling", default="cls", choices=["cls", "gap"])
    p.add_argument("--cpe", action="store_true", help="RO-ViT cropped positional embedding")
    p.add_argument(
        "--cpe-up-size",
        type=int,
        default=36,
        help="CPE upsampled grid (RO-ViT: 14 -> 64, about 4.5x; 8 -> 36 here)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random resized crop (scale 0.5-1) and horizontal flip of each caption image",
    )
    p.add_argument(
        "--logit-bias",
        type=float,
        default=None,
        help="add a learnable logit bias with this initial value (SigLIP: -10); focal loss only",
    )
    p.add_argument("--init-scale", type=float, default=None, help="initial logit scale (exp)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--max-images", type=int, default=0, help="use only the first N images")
    p.add_argument(
        "--plain-captions",
        action="store_true",
        help="use only an image's caption variants without colour/size/position words",
    )
    p.add_argument("--first-caption", action="store_true", help="always the first caption")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--prompts", default="single", choices=["single", "vild", "clip"])
    p.add_argument("--out", default="", help="save the open_clip state dict here")
    p.add_argument("--log", default="", help="write the run record (JSON) here")
    return p


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse ``argv`` and run :func:`pretrain_in_memory`."""
    return pretrain_in_memory(build_argument_parser().parse_args(argv))


def pretrain_in_memory(args: argparse.Namespace) -> Dict:
    """Pretrain, evaluate the zero-shot crop accuracy, save ``args.out`` / ``args.log``.

    Returns:
        ``{"args", "train_seconds", "history"}``; ``history`` lists ``{"step", "accuracy"}``
        (accuracy as :func:`~ovdet_plugin.evaluation.zero_shot_crops.zero_shot_accuracy`).
    """
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    clip_model = build_clip_model(args.model_name, args.init)
    tokenizer = get_clip_tokenizer(args.model_name)
    if args.init_scale is not None:
        with torch.no_grad():
            clip_model.logit_scale.fill_(math.log(args.init_scale))
    if args.logit_bias is not None:
        clip_model.logit_bias = torch.nn.Parameter(torch.tensor(float(args.logit_bias)))
    focal_loss = "focal" if args.loss == "focal" else "softmax"
    model = RegionAwareCLIP(
        clip_model=clip_model,
        tokenizer=tokenizer,
        cpe=CroppedPosEmbed(up_size=args.cpe_up_size) if args.cpe else None,
        pooling=args.pooling,
        loss=focal_loss,
        gather=False,
    )
    size = model.image_size[0]
    data = load_pretrain_set(args.dataset, size, tokenizer, args.max_images, args.plain_captions)
    crops = load_crops(args.eval_dataset or args.dataset, size)
    n = len(data["per_image"])
    print(
        f"{n} caption images, {data['num_texts']} captions ({data['num_distinct']} distinct), "
        f"{len(crops['category_ids'])} eval crops; setup {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    decay = [q for name, q in model.named_parameters() if q.ndim >= 2 and "embedding" not in name]
    no_decay = [
        q for name, q in model.named_parameters() if not (q.ndim >= 2 and "embedding" not in name)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(args.seed)
    history = []
    model.train()
    order = torch.randperm(n, generator=gen)
    pos = 0
    t_train = time.perf_counter()
    for step in range(args.steps):
        if pos + args.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        if args.first_caption:
            cap = torch.tensor([data["per_image"][i][0] for i in idx.tolist()])
        else:
            choice = torch.randint(0, 1 << 30, (len(idx),), generator=gen).tolist()
            cap = torch.tensor(
                [
                    data["per_image"][i][c % len(data["per_image"][i])]
                    for i, c in zip(idx.tolist(), choice)
                ]
            )
        images = data["images"][idx]
        if args.augment:
            images = random_resized_crops(images, gen)
        images = (images.float() / 255.0 - mean) / std
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img_f = model.encode_image(images)
        txt_f = model.encode_text(data["tokens"][cap])
        if args.loss == "multipos":
            scale = model.clip.logit_scale.exp().clamp(max=100.0)
            loss = multipositive_softmax_loss(img_f, txt_f, scale, data["caption_ids"][cap])
        else:
            loss = sum(model.compute_loss(img_f, txt_f).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t_train
            print(
                f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e} "
                f"scale {model.clip.logit_scale.exp().item():.1f} "
                f"bias {float(getattr(model.clip, 'logit_bias', None) or 0.0):.2f} "
                f"{el / (step + 1):.2f} s/step",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            acc = zero_shot_accuracy(
                model.clip, tokenizer, crops, prompts=args.prompts, encode_image=model.encode_image
            )
            history.append({"step": step + 1, "accuracy": acc})
            print(f"  eval @{step + 1}: {format_accuracy(acc)}", flush=True)
            if args.out:  # keep the latest weights, in case the run is stopped early
                save(model, args.out)
    train_s = time.perf_counter() - t_train
    acc = zero_shot_accuracy(
        model.clip, tokenizer, crops, prompts=args.prompts, encode_image=model.encode_image
    )
    history.append({"step": args.steps, "accuracy": acc})
    print(f"final @{args.steps}: {format_accuracy(acc)}; train {train_s:.0f} s", flush=True)
    for ps in ("vild", "clip", "single"):
        if ps != args.prompts:
            a = zero_shot_accuracy(
                model.clip, tokenizer, crops, prompts=ps, encode_image=model.encode_image
            )
            print(f"  prompts={ps}: {format_accuracy(a)}", flush=True)
            history.append({"step": args.steps, "prompts": ps, "accuracy": a})
    if args.out:
        save(model, args.out)
        print(f"saved {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    record = {"args": vars(args), "train_seconds": train_s, "history": history}
    if args.log:
        with atomic_write_path(args.log) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
    return record
