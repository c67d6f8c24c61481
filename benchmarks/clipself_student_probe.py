"""How a CLIPSelf student's region embeddings relate to its teacher's (eighteenth session,
benchmarks/RESULTS.md "CLIPSelf for a two-block tower"): over the ground-truth boxes of a split,
the teacher's embeddings of CLIPSelf's crops (padded, or stretched as
``--teacher-crop-style``) and the student's 1x1 RoIAlign features of
its dense map, each classified against the category names, plus the mean cosine between the two
and between embeddings of the same and of different kinds.

    python benchmarks/clipself_student_probe.py --dataset DIR --teacher tiny_clip.pt \\
        --student clipself_final.pt [--window 64 --attention-last-block]
"""

import argparse
import sys

import torch
import torch.nn.functional as F

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.crops import normalize_for_clip
from ovdet_plugin.clip.dense import DenseCLIPViT
from ovdet_plugin.clip.loading import clip_image_size
from ovdet_plugin.clip.text_embeddings import encode_vocabulary
from ovdet_plugin.evaluation.region_zero_shot import boxed_images, load_split
from ovdet_plugin.pretraining.clipself import TEACHER_CROP_STYLES, roi_features


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="LVIS-format folder with <split>.json")
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=300, help="first N images of the split")
    p.add_argument("--model-name", default="ovdet-tiny-vit-avg")
    p.add_argument("--teacher", required=True, help="the tower CLIPSelf started from")
    p.add_argument("--student", required=True, help="CLIPSelf's export")
    p.add_argument("--crop-scale", type=float, default=1.5, help="teacher crop (CLIPSelf: 1.5)")
    p.add_argument(
        "--teacher-crop-style",
        default="padded",
        choices=sorted(TEACHER_CROP_STYLES),
        help="as MODEL.OVD.CLIPSELF.TEACHER_CROP_STYLE (padded: the paper's)",
    )
    p.add_argument("--window", type=int, default=0, help="student on windows (TOWER_WINDOW)")
    p.add_argument("--attention-last-block", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    teacher = build_clip_model(args.model_name, args.teacher).eval()
    dense = DenseCLIPViT(build_clip_model(args.model_name, args.student).visual).eval()
    data, cats = load_split(args.dataset, args.split)
    text = encode_vocabulary(
        teacher,
        get_clip_tokenizer(args.model_name),
        [c["name"] for c in cats],  # ascending id order, as category_names gives them
        prompts="single",
        show_progress=False,
    )
    index = {c["id"]: i for i, c in enumerate(cats)}
    crop = TEACHER_CROP_STYLES[args.teacher_crop_style]
    t_emb, s_emb, labels = [], [], []
    with torch.no_grad():
        for bgr, anns, boxes in boxed_images(data, args.dataset, args.images):
            x = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
            crops = normalize_for_clip(crop(x, boxes, clip_image_size(teacher)[0], args.crop_scale))
            t_emb.append(F.normalize(teacher.visual(crops), dim=-1))
            fmap = dense(
                normalize_for_clip(x)[None],
                tile=args.window,
                value_only_last=not args.attention_last_block,
            )
            s_emb.append(roi_features(fmap, [boxes], dense.patch_size[0]))
            labels += [index[a["category_id"]] for a in anns]
    t, s, y = torch.cat(t_emb), torch.cat(s_emb), torch.tensor(labels)
    rare = torch.tensor([cats[i]["frequency"] == "r" for i in labels])
    same = y[:, None] == y[None]
    off_diag = ~torch.eye(len(y), dtype=torch.bool)
    print(f"{len(y)} boxes; cosine(student, teacher) {(t * s).sum(-1).mean():.3f}")
    for name, e in (("teacher", t), ("student", s)):
        pred = (e @ text.t()).argmax(1)
        sim = e @ e.t()
        print(
            f"{name}: top-1 all {100 * (pred == y).float().mean():.1f}%, rare "
            f"{100 * (pred[rare] == y[rare]).float().mean():.1f}%; mean cosine within a kind "
            f"{sim[same & off_diag].mean():.3f}, across kinds {sim[~same].mean():.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
