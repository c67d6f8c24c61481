"""LVIS v1 open-vocabulary splits on small LVIS-format files with the real schema, category ids
and names (the real files cannot be downloaded here)."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, Instances

import ovdet_plugin  # noqa: F401  (registers the built-in names)
from ovdet_plugin.data import get_dataset_vocabulary, register_builtin_datasets
from ovdet_plugin.data.datasets import register_lvis_format_dataset, register_lvis_v1_ov

CATS = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
BY_FREQ = {f: [c for c in CATS if c["frequency"] == f] for f in "frc"}
# the first three real classes of each frequency group
PICK = {f: BY_FREQ[f][:3] for f in "frc"}
NAMES = {
    "lvis_v1_train_ov_test": ("coco", "lvis/lvis_v1_train.json", True),
    "lvis_v1_val_test": ("coco", "lvis/lvis_v1_val.json", False),
}


def _box_ann(ann_id, image_id, cat_id, x, y, w, h):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": [x, y, w, h],
        "area": w * h,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _write_lvis(root, split, folder):
    """An LVIS v1-format file: all 1203 real categories, 4 images (COCO urls), annotations of
    frequent, common and rare classes."""
    images, anns = [], []
    picked = [c for f in "frc" for c in PICK[f]]
    for i in range(4):
        img_id = 100 + i
        images.append(
            {
                "id": img_id,
                "height": 200,
                "width": 300,
                "coco_url": f"http://images.cocodataset.org/{folder}/{img_id:012d}.jpg",
                "neg_category_ids": [c["id"] for c in BY_FREQ["c"][10:14]],
                "not_exhaustive_category_ids": [],
            }
        )
        for j, cat in enumerate(picked[i::2]):
            anns.append(
                _box_ann(len(anns) + 1, img_id, cat["id"], 10 + 40 * j, 20 + 10 * i, 30, 40)
            )
    categories = [
        {k: c[k] for k in ("id", "name", "synonyms", "def", "synset", "frequency")}
        | {"image_count": 1, "instance_count": 1}
        for c in CATS
    ]
    data = {"info": {}, "licenses": [], "images": images, "annotations": anns,
            "categories": categories}  # fmt: skip
    path = os.path.join(root, "lvis", f"lvis_v1_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    os.makedirs(os.path.join(root, "coco", folder), exist_ok=True)
    return data


@pytest.fixture(scope="module")
def lvis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2data")
    train = _write_lvis(str(root), "train", "train2017")
    val = _write_lvis(str(root), "val", "val2017")
    register_lvis_v1_ov(str(root), names=NAMES)
    return str(root), train, val


def test_builtin_names_registered():
    for name in ("lvis_v1_train_ov", "lvis_v1_val"):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "lvis" and len(meta.thing_classes) == 1203
        assert meta.thing_class_splits.count("novel") == 337
        assert meta.thing_class_splits.count("base") == 866
    assert MetadataCatalog.get("lvis_v1_train_ov").base_only is True
    assert MetadataCatalog.get("lvis_v1_val").base_only is False


def test_rare_annotations_removed_from_training(lvis_root):
    root, train, _ = lvis_root
    dicts = DatasetCatalog.get("lvis_v1_train_ov_test")
    rare_ids = {c["id"] for c in BY_FREQ["r"]}
    n_rare = sum(a["category_id"] in rare_ids for a in train["annotations"])
    assert n_rare > 0
    got = [a for r in dicts for a in r["annotations"]]
    assert len(got) == len(train["annotations"]) - n_rare
    vocab = get_dataset_vocabulary("lvis_v1_train_ov_test")
    assert all(vocab.splits[a["category_id"]] == "base" for a in got)
    assert {a["category_id"] + 1 for a in got} == {c["id"] for f in "fc" for c in PICK[f]}
    # images stay (Detectron2's FILTER_EMPTY_ANNOTATIONS drops empty ones in training)
    assert len(dicts) == 4
    assert dicts[0]["file_name"] == os.path.join(root, "coco", "train2017", "000000000100.jpg")
    meta = MetadataCatalog.get("lvis_v1_train_ov_test")
    counts = {c["id"]: c["image_count"] for c in meta.class_image_count}
    assert all(counts[i] == 0 for i in rare_ids) and counts[1] > 0
    assert meta.thing_classes[CATS.index(BY_FREQ["r"][0])] == BY_FREQ["r"][0]["name"]


def test_val_keeps_all_classes(lvis_root):
    _, _, val = lvis_root
    dicts = DatasetCatalog.get("lvis_v1_val_test")
    assert sum(len(r["annotations"]) for r in dicts) == len(val["annotations"])
    assert dicts[0]["neg_category_ids"] == [c["id"] for c in BY_FREQ["c"][10:14]]


def _perfect(dicts, drop=()):
    out = []
    for rec in dicts:
        anns = [a for a in rec["annotations"] if a["category_id"] not in drop]
        inst = Instances((rec["height"], rec["width"]))
        inst.pred_boxes = Boxes(
            torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
            .float()
            .reshape(-1, 4)
        )
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        masks = np.zeros((len(anns), rec["height"], rec["width"]), bool)
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            masks[k, y : y + h, x : x + w] = True
        inst.pred_masks = torch.from_numpy(masks)
        out.append(({"image_id": rec["image_id"]}, {"instances": inst}))
    return out


def test_stock_lvis_evaluator_reports_apr_apc_apf(lvis_root, tmp_path):
    dicts = DatasetCatalog.get("lvis_v1_val_test")
    ev = LVISEvaluator("lvis_v1_val_test", distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for inp, out in _perfect(dicts):
        ev.process([inp], [out])
    res = ev.evaluate()
    for task in ("bbox", "segm"):
        for metric in ("AP", "APr", "APc", "APf"):
            assert res[task][metric] == pytest.approx(100.0), (task, metric)
    # without the rare (novel) detections, APr is 0 and APf is untouched
    rare = {c["id"] - 1 for c in BY_FREQ["r"]}
    ev.reset()
    for inp, out in _perfect(dicts, drop=rare):
        ev.process([inp], [out])
    res = ev.evaluate()
    assert res["bbox"]["APr"] == pytest.approx(0.0) and res["bbox"]["APf"] == pytest.approx(100.0)


def test_missing_files_name_the_path_and_readme(tmp_path):
    register_lvis_v1_ov(str(tmp_path), names={"lvis_v1_missing_test": NAMES["lvis_v1_val_test"]})
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("lvis_v1_missing_test")
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "lvis", "lvis_v1_val.json") in msg
    assert "datasets/README.md" in msg and "LVIS v1 (open-vocabulary)" in msg


def test_detectron2_datasets_env_is_the_root(lvis_root, monkeypatch):
    root, _, _ = lvis_root
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    try:
        register_builtin_datasets()
        assert MetadataCatalog.get("lvis_v1_val").json_file == os.path.join(
            root, "lvis", "lvis_v1_val.json"
        )
        assert len(DatasetCatalog.get("lvis_v1_train_ov")) == 4
    finally:
        monkeypatch.delenv("DETECTRON2_DATASETS")
        register_builtin_datasets()
    assert MetadataCatalog.get("lvis_v1_val").json_file == os.path.join(
        "datasets", "lvis", "lvis_v1_val.json"
    )


def test_generic_lvis_format_registration_accepts_any_name(lvis_root):
    root, train, _ = lvis_root
    json_file = os.path.join(root, "lvis", "lvis_v1_train.json")
    register_lvis_format_dataset("my_own_dataset", json_file, os.path.join(root, "coco"),
                                 base_only=True)  # fmt: skip
    meta = MetadataCatalog.get("my_own_dataset")
    assert meta.thing_dataset_id_to_contiguous_id[1] == 0 and len(meta.thing_classes) == 1203
    with open(json_file) as f:  # the loader drops images missing on disk: make them exist
        for img in json.load(f)["images"]:
            path = os.path.join(root, "coco", *img["coco_url"].split("/")[-2:])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()
    dicts = DatasetCatalog.get("my_own_dataset")
    rare = {c["id"] - 1 for c in BY_FREQ["r"]}
    assert not [a for r in dicts for a in r["annotations"] if a["category_id"] in rare]
    assert dicts[0]["file_name"].endswith(os.path.join("train2017", "000000000100.jpg"))
