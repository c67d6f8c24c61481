"""The generated open-vocabulary dataset: invariants, determinism, registration, evaluation."""

import hashlib
import json
import os
import runpy

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, Instances

import ovdet_plugin  # noqa: F401  (registers the built-in names)
from ovdet_plugin.data import get_dataset_vocabulary, register_synthetic_dataset
from ovdet_plugin.data.synthetic import (
    OBJECT_KINDS,
    frequency_of,
    frequency_thresholds,
    generate_synthetic_dataset,
    iter_object_crops,
    load_captions,
)
from ovdet_plugin.data.synthetic.captions import mentions
from ovdet_plugin.data.synthetic.render import compose_scene, mask_to_polygons

SMALL = dict(seed=3, num_train=60, num_val=24, num_pretrain=40, progress=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ovdet_synthetic"
    meta = generate_synthetic_dataset(out, **SMALL)
    return str(out), meta


def _load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def _decode(ann, h, w):
    segm = ann["segmentation"]
    rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
    return mask_util.decode(rle).astype(bool)


def test_layout_and_meta(synth):
    d, meta = synth
    for f in ("train.json", "train_all.json", "val.json", "captions.jsonl", "meta.json"):
        assert os.path.isfile(os.path.join(d, f))
    assert meta["config"]["seed"] == 3
    assert meta["counts"]["train_images"] == 60 and meta["counts"]["val_images"] == 24
    assert len(meta["categories"]) == len(OBJECT_KINDS) == 32
    assert not [p for p in os.listdir(os.path.dirname(d)) if ".partial-" in p]


@pytest.mark.parametrize("split", ["train_all", "val"])
def test_boxes_inside_images_and_masks_inside_boxes(synth, split):
    d, _ = synth
    data = _load(d, f"{split}.json")
    imgs = {im["id"]: im for im in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        im = imgs[ann["image_id"]]
        h, w = im["height"], im["width"]
        x, y, bw, bh = ann["bbox"]
        assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
        for poly in ann["segmentation"]:
            xs, ys = poly[0::2], poly[1::2]
            assert min(xs) >= x and max(xs) <= x + bw and min(ys) >= y and max(ys) <= y + bh
        m = _decode(ann, h, w)
        # exact: the decoded mask has the annotated area and exactly the annotated box
        assert m.sum() == ann["area"]
        ys_, xs_ = np.nonzero(m)
        assert [xs_.min(), ys_.min(), xs_.max() + 1 - xs_.min(), ys_.max() + 1 - ys_.min()] == [
            x,
            y,
            bw,
            bh,
        ]


def test_masks_of_one_image_do_not_overlap(synth):
    d, _ = synth
    data = _load(d, "val.json")
    im = data["images"][0]
    masks = [
        _decode(a, im["height"], im["width"])
        for a in data["annotations"]
        if a["image_id"] == im["id"]
    ]
    total = np.sum(masks, axis=0)
    assert total.max() <= 1  # occlusion: each pixel belongs to at most one object


def test_train_split_has_no_rare_annotation(synth):
    d, meta = synth
    train, full = _load(d, "train.json"), _load(d, "train_all.json")
    rare = {c["id"] for c in train["categories"] if c["frequency"] == "r"}
    planned_rare = {i + 1 for i, k in enumerate(OBJECT_KINDS) if k.tier == "r"}
    assert rare == planned_rare and len(rare) == 8
    assert not [a for a in train["annotations"] if a["category_id"] in rare]
    # ... but rare objects are in the training images, unannotated (as in LVIS after the split)
    full_rare = [a for a in full["annotations"] if a["category_id"] in rare]
    assert {a["category_id"] for a in full_rare} == rare
    not_exhaustive = {c for im in train["images"] for c in im["not_exhaustive_category_ids"]}
    assert not_exhaustive == rare
    # val has every category, rare ones included
    val = _load(d, "val.json")
    assert {a["category_id"] for a in val["annotations"]} == set(range(1, 33))


def test_frequency_rule(synth):
    d, meta = synth
    full = _load(d, "train_all.json")
    t_r, t_c = frequency_thresholds(60, meta["config"]["frequency_thresholds"])
    assert (meta["frequency_rule"]["t_r"], meta["frequency_rule"]["t_c"]) == (t_r, t_c)
    for c in full["categories"]:
        n = len({a["image_id"] for a in full["annotations"] if a["category_id"] == c["id"]})
        assert c["image_count"] == n
        assert c["frequency"] == frequency_of(n, t_r, t_c)
    assert {c["frequency"] for c in full["categories"]} == {"f", "c", "r"}
    assert frequency_thresholds(100_000, (0.0001, 0.001)) == (10, 100)  # LVIS's own rule


def test_negative_categories_are_absent(synth):
    d, _ = synth
    val = _load(d, "val.json")
    for im in val["images"]:
        present = {a["category_id"] for a in val["annotations"] if a["image_id"] == im["id"]}
        assert not present & set(im["neg_category_ids"])
        assert present | set(im["neg_category_ids"]) == set(range(1, 33))


def test_captions_mention_every_category_of_their_image(synth):
    d, _ = synth
    lines = load_captions(d)
    assert len(lines) == 40
    names = {i + 1: (k.name, k.plural) for i, k in enumerate(OBJECT_KINDS)}
    seen = set()
    for line in lines:
        assert os.path.isfile(os.path.join(d, line["file_name"]))
        assert line["category_ids"] and line["caption"] == line["captions"][0]
        assert len(set(line["captions"])) == len(line["captions"])  # variants differ
        for cap in line["captions"]:
            for cid in line["category_ids"]:
                assert mentions(cap, *names[cid]), (cap, names[cid])
        seen |= set(line["category_ids"])
    assert seen == set(names)  # rare categories are in the captions too
    distinct = {cap for line in lines for cap in line["captions"]}
    assert len(distinct) > 0.9 * sum(len(line["captions"]) for line in lines)


def _digest(d):
    h = hashlib.sha256()
    for name in ("train.json", "train_all.json", "val.json", "captions.jsonl"):
        with open(os.path.join(d, name), "rb") as f:
            h.update(f.read())
    for split in ("train", "val", "pretrain"):
        folder = os.path.join(d, "images", split)
        for f in sorted(os.listdir(folder))[:5]:
            with open(os.path.join(folder, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_deterministic_by_seed(tmp_path):
    small = dict(SMALL, num_train=30, num_val=8, num_pretrain=10)
    a = generate_synthetic_dataset(tmp_path / "a", **small)
    b = generate_synthetic_dataset(tmp_path / "b", **small)
    generate_synthetic_dataset(tmp_path / "c", **dict(small, seed=4))
    assert a["categories"] == b["categories"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    # same config again: kept as is; another config: refused unless overwrite
    again = generate_synthetic_dataset(tmp_path / "a", **small)
    assert again["seconds"] == a["seconds"]
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_synthetic_dataset(tmp_path / "a", **dict(small, seed=9))
    generate_synthetic_dataset(tmp_path / "a", overwrite=True, **dict(small, seed=4))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "c")


def test_sizes_configurable_and_rle(tmp_path):
    meta = generate_synthetic_dataset(
        tmp_path / "s",
        **dict(SMALL, num_train=25, num_val=5, num_pretrain=3, image_size=96),
        segmentation="rle",
        image_format="jpg",
    )
    val = _load(tmp_path / "s", "val.json")
    assert {(im["height"], im["width"]) for im in val["images"]} == {(96, 96)}
    assert val["images"][0]["file_name"].endswith(".jpg")
    ann = val["annotations"][0]
    assert isinstance(ann["segmentation"], dict)
    assert _decode(ann, 96, 96).sum() == ann["area"]
    assert meta["counts"]["pretrain_images"] == 3


def test_registration_loads_and_flags(synth):
    d, _ = synth
    names = register_synthetic_dataset(d, prefix="test_synth")
    assert set(names) == {"test_synth_train", "test_synth_train_all", "test_synth_val"}
    meta = MetadataCatalog.get("test_synth_train")  # eager: known before loading
    assert meta.thing_classes[:3] == ["star", "heart", "arrow"]
    assert meta.evaluator_type == "lvis"
    vocab = get_dataset_vocabulary("test_synth_val")
    novel = {n for n, s in zip(vocab.names, vocab.splits) if s == "novel"}
    assert novel == {k.name for k in OBJECT_KINDS if k.tier == "r"}
    train = DatasetCatalog.get("test_synth_train")
    novel_ids = {i for i, s in enumerate(vocab.splits) if s == "novel"}
    assert len(train) == 60
    assert not [a for r in train for a in r["annotations"] if a["category_id"] in novel_ids]
    full = DatasetCatalog.get("test_synth_train_all")
    assert [a for r in full for a in r["annotations"] if a["category_id"] in novel_ids]
    counts = {c["id"]: c["image_count"] for c in meta.class_image_count}
    assert all(counts[i + 1] == 0 for i in novel_ids)
    rec = train[0]
    assert os.path.isfile(rec["file_name"]) and rec["height"] == 128


def test_lvis_evaluator_perfect_prediction(synth, tmp_path):
    d, _ = synth
    register_synthetic_dataset(d, prefix="test_synth_eval")
    dicts = DatasetCatalog.get("test_synth_eval_val")
    evaluator = LVISEvaluator("test_synth_eval_val", distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    for rec in dicts:
        h, w = rec["height"], rec["width"]
        boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in rec["annotations"])]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in rec["annotations"]])
        inst.pred_masks = torch.from_numpy(np.stack([_decode(a, h, w) for a in rec["annotations"]]))
        evaluator.process([{"image_id": rec["image_id"]}], [{"instances": inst}])
    res = evaluator.evaluate()
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "APr", "APc", "APf"):
            assert res[task][metric] == pytest.approx(100.0, abs=1e-6), (task, metric)


def test_missing_dataset_path_error(tmp_path):
    missing = tmp_path / "nowhere"
    register_synthetic_dataset(missing, prefix="test_synth_missing")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("test_synth_missing_val")
    msg = str(e.value)
    assert str(missing / "val.json") in msg
    assert "datasets/README.md" in msg and "Generated dataset (ovdet_synthetic)" in msg
    assert "generate_synthetic_data.py" in msg
    # the built-in name is registered at import and fails the same way when its folder is absent
    assert "ovdet_synthetic_val" in DatasetCatalog.list()


def test_mask_to_polygons_is_exact_on_random_masks():
    import cv2

    rng = np.random.default_rng(0)
    for i in range(40):
        noise = cv2.GaussianBlur(rng.random((40, 50)).astype(np.float32), (0, 0), 2 + i % 3)
        mask = noise > np.quantile(noise, 0.6)
        polys, has_hole = mask_to_polygons(mask)
        if has_hole:
            continue
        rle = mask_util.merge(mask_util.frPyObjects(polys, 40, 50))
        assert (mask_util.decode(rle).astype(bool) == mask).all()
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert mask_to_polygons(ring)[1] is True
    diag = np.eye(4, dtype=bool)  # pixels touching only at corners
    polys, has_hole = mask_to_polygons(diag)
    assert not has_hole and len(polys) == 4


def test_every_kind_can_be_drawn_at_small_and_large_sizes():
    rng = np.random.default_rng(1)
    for kind in OBJECT_KINDS:
        for side, rng_size in ((64, (0.3, 0.4)), (128, (0.4, 0.5))):
            img, placed = compose_scene(rng, (side, side), [(kind, 1)], rng_size)
            assert len(placed) == 1, kind.name
            assert not mask_to_polygons(placed[0].mask)[1]
            assert img.shape == (side, side, 3) and img.dtype == np.uint8


def test_object_crops(synth):
    d, _ = synth
    crops = list(iter_object_crops(d, "val"))
    assert len(crops) == len(_load(d, "val.json")["annotations"])
    assert all(c["image"].ndim == 3 and c["image"].size > 0 for c in crops)
    rare = list(iter_object_crops(d, "val", frequencies=["r"], max_crops=5))
    assert 0 < len(rare) <= 5 and all(c["frequency"] == "r" for c in rare)
    whole = list(iter_object_crops(d, "val", min_visible=0.95))
    assert 0 < len(whole) < len(crops) and all(c["visible_fraction"] >= 0.95 for c in whole)
    assert min(c["visible_fraction"] for c in crops) >= 0.6  # SyntheticConfig.min_visible


def test_cli(tmp_path):
    main = runpy.run_path(
        os.path.join(os.path.dirname(__file__), "..", "tools", "generate_synthetic_data.py")
    )["main"]
    out = tmp_path / "cli"
    args = ["--out", str(out), "--num-train", "25", "--num-val", "4", "--num-pretrain", "2"]
    assert main(args + ["--no-progress"]) == 0
    assert os.path.isfile(out / "val.json")
    assert main(args + ["--no-progress", "--seed", "5"]) == 2  # exists, other config
