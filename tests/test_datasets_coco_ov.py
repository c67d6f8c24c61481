"""OV-COCO: registration, the prepare script, and the evaluator (AP50 novel/base/all), on small
COCO-format files with the real category ids and names."""

import json
import os
import runpy

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.structures import Boxes, Instances

import ovdet_plugin  # noqa: F401  (registers the built-in names)
from ovdet_plugin.data.datasets import register_ov_coco
from ovdet_plugin.evaluation import OVCOCOEvaluator, build_ov_evaluator
from ovdet_plugin.vocabulary import COCO_OV_BASE, COCO_OV_NOVEL

THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]
ID = {c["name"]: c["id"] for c in THINGS}
# base: person (1), car (3); novel: cat (17), dog (18), bus (6); unused: traffic light (10)
IMAGES = {
    1: [("person", 10, 10, 50, 80), ("dog", 100, 40, 60, 50)],
    2: [("car", 20, 30, 90, 40), ("cat", 150, 100, 40, 40), ("person", 200, 20, 30, 70)],
    3: [("bus", 30, 30, 120, 80), ("traffic light", 200, 10, 15, 30)],
    4: [("traffic light", 5, 5, 10, 25)],  # only an unused class
    5: [("car", 60, 60, 50, 30), ("dog", 10, 120, 40, 30), ("person", 180, 100, 40, 90)],
}
NAMES = {
    "coco_ov_train_test": ("coco/train2017", "coco/annotations/instances_train2017.json", True),
    "coco_ov_val_test": ("coco/val2017", "coco/annotations/instances_val2017_ov65.json", False),
}


def _write_coco(root, split):
    images, anns = [], []
    for img_id, objs in IMAGES.items():
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "height": 240,
                       "width": 320})  # fmt: skip
        for name, x, y, w, h in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": ID[name],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    cats = [{"id": c["id"], "name": c["name"], "supercategory": "x"} for c in THINGS]
    path = os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.makedirs(os.path.join(root, "coco", f"{split}2017"), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"info": {}, "licenses": [], "images": images, "annotations": anns,
                   "categories": cats}, f)  # fmt: skip


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("d2coco"))
    _write_coco(root, "train")
    _write_coco(root, "val")
    script = os.path.join(os.path.dirname(__file__), "..", "datasets", "prepare_ov_coco.py")
    assert runpy.run_path(script)["main"](["--root", root]) == 0
    register_ov_coco(root, names=NAMES)
    return root


def test_builtin_names_and_flags():
    for name in ("coco_2017_ov_train", "coco_2017_ov_val"):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert len(meta.thing_classes) == 65
        assert meta.thing_class_splits.count("base") == 48
        assert meta.thing_class_splits.count("novel") == 17
        novel = {n for n, s in zip(meta.thing_classes, meta.thing_class_splits) if s == "novel"}
        assert novel == set(COCO_OV_NOVEL)
        base = {n for n, s in zip(meta.thing_classes, meta.thing_class_splits) if s == "base"}
        assert base == set(COCO_OV_BASE)
        ids = meta.thing_dataset_id_to_contiguous_id
        assert ids[ID["airplane"]] == meta.thing_classes.index("airplane")
    assert MetadataCatalog.get("coco_2017_ov_val").evaluator_type == "ov_coco"


def test_prepare_script_writes_65_classes(coco_root):
    with open(os.path.join(coco_root, "coco/annotations/instances_val2017_ov65.json")) as f:
        data = json.load(f)
    assert len(data["categories"]) == 65
    assert ID["traffic light"] not in {a["category_id"] for a in data["annotations"]}
    assert sorted(im["id"] for im in data["images"]) == [1, 2, 3, 5]  # image 4: no OV class


def test_training_set_has_base_annotations_only(coco_root):
    dicts = DatasetCatalog.get("coco_ov_train_test")
    meta = MetadataCatalog.get("coco_ov_train_test")
    names = [meta.thing_classes[a["category_id"]] for r in dicts for a in r["annotations"]]
    assert sorted(names) == ["car", "car", "person", "person", "person"]
    assert sorted(r["image_id"] for r in dicts) == [1, 2, 5]  # 3 and 4 have no base object
    assert dicts[0]["file_name"].startswith(os.path.join(coco_root, "coco", "train2017"))
    assert not hasattr(meta, "json_file")  # the 80-class source must not serve as ground truth


def test_generalized_val_set(coco_root):
    dicts = DatasetCatalog.get("coco_ov_val_test")
    meta = MetadataCatalog.get("coco_ov_val_test")
    names = sorted(meta.thing_classes[a["category_id"]] for r in dicts for a in r["annotations"])
    assert names == sorted(["person", "dog", "car", "cat", "person", "bus", "car", "dog", "person"])


def _predictions(dicts, keep=lambda split: True, shift=0):
    meta = MetadataCatalog.get("coco_ov_val_test")
    out = []
    for rec in dicts:
        anns = [a for a in rec["annotations"] if keep(meta.thing_class_splits[a["category_id"]])]
        inst = Instances((rec["height"], rec["width"]))
        inst.pred_boxes = Boxes(
            torch.tensor(
                [[x + shift, y, x + w + shift, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            )
            .float()
            .reshape(-1, 4)
        )
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        out.append(({"image_id": rec["image_id"]}, {"instances": inst}))
    return out


def _evaluate(preds, tmp_path):
    ev = build_ov_evaluator("coco_ov_val_test", output_dir=str(tmp_path), distributed=False)
    assert isinstance(ev, OVCOCOEvaluator)
    ev.reset()
    for inp, out in preds:
        ev.process([inp], [out])
    return ev.evaluate()["bbox"]


def test_evaluator_perfect_and_without_novel(coco_root, tmp_path):
    dicts = DatasetCatalog.get("coco_ov_val_test")
    res = _evaluate(_predictions(dicts), tmp_path)
    assert res["AP50_novel"] == pytest.approx(100.0)
    assert res["AP50_base"] == pytest.approx(100.0)
    assert res["AP50_all"] == pytest.approx(100.0)
    assert res["AP"] == pytest.approx(100.0) and res["AP50"] == pytest.approx(100.0)
    assert "AP-dog" in res and "APs" in res  # the usual COCO figures are still there

    res = _evaluate(_predictions(dicts, keep=lambda s: s != "novel"), tmp_path)
    assert res["AP50_novel"] == pytest.approx(0.0)
    assert res["AP50_base"] == pytest.approx(100.0)
    # all = mean over the 5 classes with ground truth: person, car (100) and cat, dog, bus (0)
    assert res["AP50_all"] == pytest.approx(40.0)


def test_evaluator_ap50_vs_ap(coco_root, tmp_path):
    """Boxes shifted to IoU ~0.7 still count at AP50 but not at the strict thresholds."""
    dicts = DatasetCatalog.get("coco_ov_val_test")
    res = _evaluate(_predictions(dicts, shift=3), tmp_path)
    assert res["AP50_novel"] == pytest.approx(100.0)
    assert res["AP_novel"] < 100.0


def test_evaluator_needs_flags_and_matching_ground_truth(coco_root, tmp_path):
    MetadataCatalog.get("coco_ov_noflags_test").set(
        json_file=os.path.join(coco_root, "coco/annotations/instances_val2017_ov65.json")
    )
    with pytest.raises(ValueError, match="thing_class_splits"):
        OVCOCOEvaluator("coco_ov_noflags_test", output_dir=str(tmp_path))
    # the 80-class file as ground truth would misalign per-class AP: refused
    register_ov_coco(
        coco_root,
        names={"coco_ov_wronggt_test": ("coco/val2017", "coco/annotations/instances_val2017.json",
                                        False)},  # fmt: skip
    )
    with pytest.raises(ValueError, match="prepare_ov_coco.py"):
        OVCOCOEvaluator("coco_ov_wronggt_test", output_dir=str(tmp_path))


def test_missing_files_name_the_path_and_readme(tmp_path):
    register_ov_coco(str(tmp_path), names={"coco_ov_missing_test": NAMES["coco_ov_val_test"]})
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("coco_ov_missing_test")
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "coco/annotations/instances_val2017_ov65.json") in msg
    assert "datasets/README.md" in msg and "OV-COCO" in msg and "prepare_ov_coco.py" in msg
