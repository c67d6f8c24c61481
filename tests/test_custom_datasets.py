"""Own data: COCO-format registration with a base/novel split, the OV-COCO evaluator on it, and
registration from dataset specs (config key and --register-dataset)."""

import argparse
import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from ovdet_plugin import get_ovdet_cfg
from ovdet_plugin.data.datasets import (
    add_dataset_arguments,
    get_dataset_vocabulary,
    merge_dataset_arguments,
    parse_dataset_spec,
    register_coco_format_ov_dataset,
    register_datasets_from_config,
)
from ovdet_plugin.data.synthetic.coco_export import export_coco_format
from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset
from ovdet_plugin.evaluation import OVCOCOEvaluator, build_ov_evaluator


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "shapes"
    generate_synthetic_dataset(
        str(root), num_train=6, num_val=4, num_pretrain=0, image_size=64, progress=False
    )
    paths = export_coco_format(str(root))
    return str(root), paths


def _novel(paths):
    return [n.strip() for n in open(paths["novel"]) if n.strip() and not n.startswith("#")]


def test_coco_format_registration_has_the_ov_metadata(coco_files):
    root, paths = coco_files
    novel = _novel(paths)
    register_coco_format_ov_dataset("own_val", paths["val"], root, novel=novel)
    meta = MetadataCatalog.get("own_val")
    cats = sorted(json.load(open(paths["val"]))["categories"], key=lambda c: c["id"])
    assert meta.thing_classes == [c["name"] for c in cats]
    assert meta.thing_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(cats)}
    assert meta.evaluator_type == "ov_coco" and meta.json_file == paths["val"]
    expected = ["novel" if c["name"] in novel else "base" for c in cats]
    assert meta.thing_class_splits == expected
    vocab = get_dataset_vocabulary("own_val")  # what TRAIN_VOCABULARY "dataset:own_val" reads
    assert [n for n, s in zip(vocab.names, vocab.splits) if s == "novel"] == sorted(
        novel, key=[c["name"] for c in cats].index
    )
    dicts = DatasetCatalog.get("own_val")
    n_anns = len(json.load(open(paths["val"]))["annotations"])
    assert len(dicts) == 4 and sum(len(d["annotations"]) for d in dicts) == n_anns
    assert os.path.isfile(dicts[0]["file_name"])


def test_base_only_drops_novel_boxes_and_empty_images(coco_files):
    root, paths = coco_files
    register_coco_format_ov_dataset("own_train", paths["train"], root, split_file=paths["novel"])
    register_coco_format_ov_dataset(
        "own_train_base", paths["train"], root, split_file=paths["novel"], base_only=True
    )
    splits = MetadataCatalog.get("own_train_base").thing_class_splits
    full, base = DatasetCatalog.get("own_train"), DatasetCatalog.get("own_train_base")
    classes_full = [a["category_id"] for d in full for a in d["annotations"]]
    classes_base = [a["category_id"] for d in base for a in d["annotations"]]
    assert any(splits[c] == "novel" for c in classes_full)  # the file has novel boxes ...
    assert classes_base and all(splits[c] == "base" for c in classes_base)  # ... training not
    assert len(classes_base) == sum(splits[c] == "base" for c in classes_full)
    assert all(d["annotations"] for d in base)
    assert MetadataCatalog.get("own_train_base").evaluator_type == "coco"


def _prediction(record, keep_class):
    """The record's ground truth as predictions (score 1), only the classes ``keep_class``
    accepts."""
    anns = [a for a in record["annotations"] if keep_class(a["category_id"])]
    inst = Instances((record["height"], record["width"]))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
    return {"instances": inst}


def test_ov_coco_evaluator_reports_novel_and_base_on_own_data(coco_files, tmp_path):
    root, paths = coco_files
    data = json.load(open(paths["val"]))
    del data["info"]  # hand-made COCO files often lack it; pycocotools' loadRes needs it
    json.dump(data, open(tmp_path / "val_no_info.json", "w"))
    register_coco_format_ov_dataset(
        "own_val_eval", str(tmp_path / "val_no_info.json"), root, novel=_novel(paths)
    )
    evaluator = build_ov_evaluator("own_val_eval", output_dir=str(tmp_path), distributed=False)
    assert isinstance(evaluator, OVCOCOEvaluator)
    splits = MetadataCatalog.get("own_val_eval").thing_class_splits
    evaluator.reset()
    for record in DatasetCatalog.get("own_val_eval"):
        # perfect boxes for base classes, nothing for novel ones
        evaluator.process([record], [_prediction(record, lambda c: splits[c] == "base")])
    box = evaluator.evaluate()["bbox"]
    assert box["AP50_base"] == pytest.approx(100.0)
    assert box["AP50_novel"] == pytest.approx(0.0)
    assert 0.0 < box["AP50_all"] < 100.0


def test_unknown_novel_name_names_the_problem(coco_files):
    root, paths = coco_files
    with pytest.raises(ValueError, match=r"\['unicorn'\] are not categories of .*Fix the spelling"):
        register_coco_format_ov_dataset("own_bad", paths["val"], root, novel=["unicorn"])


def test_dataset_spec_parsing_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    spec = parse_dataset_spec("name=a,format=coco,json=x/train.json,images=x,novel=cat; hot dog")
    assert spec["json"] == os.path.join(str(tmp_path), "x/train.json")  # under the data root
    assert spec["novel"] == ["cat", "hot dog"] and spec["base_only"] is False
    with pytest.raises(ValueError, match=r"lacks \['images'\]. Write it as 'name="):
        parse_dataset_spec("name=a,format=coco,json=x.json")
    with pytest.raises(ValueError, match="unknown key 'imgs'; the keys are"):
        parse_dataset_spec("name=a,format=coco,json=x.json,imgs=x")
    with pytest.raises(ValueError, match="carries its split in its categories"):
        parse_dataset_spec("name=a,format=lvis,json=x.json,images=x,novel=cat")
    with pytest.raises(ValueError, match="base_only='maybe'"):
        parse_dataset_spec("name=a,format=coco,json=x.json,images=x,base_only=maybe")


def test_specs_from_config_and_flag_register_both_formats(coco_files):
    root, paths = coco_files
    parser = add_dataset_arguments(argparse.ArgumentParser())
    flag = f"name=spec_lvis,format=lvis,json={root}/val.json,images={root}"
    args = parser.parse_args(["--register-dataset", flag])
    cfg = get_ovdet_cfg(
        opts=[
            "MODEL.OVD.CUSTOM_DATASETS",
            [
                f"name=spec_coco,format=coco,json={paths['val']},images={root},split={paths['novel']}"
            ],
        ]
    )
    merge_dataset_arguments(cfg, args)
    merge_dataset_arguments(cfg, args)  # twice: not repeated
    assert len(cfg.MODEL.OVD.CUSTOM_DATASETS) == 2
    assert register_datasets_from_config(cfg) == ["spec_coco", "spec_lvis"]
    assert register_datasets_from_config(cfg) == ["spec_coco", "spec_lvis"]  # idempotent
    assert MetadataCatalog.get("spec_coco").evaluator_type == "ov_coco"
    assert MetadataCatalog.get("spec_lvis").evaluator_type == "lvis"
    coco_splits = MetadataCatalog.get("spec_coco").thing_class_splits
    lvis_splits = MetadataCatalog.get("spec_lvis").thing_class_splits
    assert coco_splits == lvis_splits  # novel.txt holds the LVIS file's rare kinds
    assert len(DatasetCatalog.get("spec_coco")) == len(DatasetCatalog.get("spec_lvis")) == 4


def test_zero_shot_crops_on_any_registered_dataset(tmp_path):
    """The zero-shot check reads registered datasets: on the generated val registered as LVIS
    format it reproduces the generated-layout figures exactly; as COCO format with the rare kinds
    as novel, it groups by novel/base with the same crops."""
    from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
    from ovdet_plugin.data.datasets import register_dataset_spec
    from ovdet_plugin.engine.synthetic_benchmark import CLIP_MODEL_NAME, SHIPPED_CLIP
    from ovdet_plugin.evaluation.zero_shot_crops import (
        load_crops,
        load_dataset_crops,
        zero_shot_accuracy,
    )

    root = str(tmp_path / "zs")
    generate_synthetic_dataset(root, num_train=4, num_val=12, num_pretrain=0, progress=False)
    paths = export_coco_format(root)
    register_dataset_spec(f"name=zs_lvis,format=lvis,json={root}/val.json,images={root}")
    register_dataset_spec(
        f"name=zs_coco,format=coco,json={paths['val']},images={root},split={paths['novel']}"
    )
    model = build_clip_model(CLIP_MODEL_NAME, SHIPPED_CLIP)  # pretrained: not all guesses equal
    tokenizer = get_clip_tokenizer(CLIP_MODEL_NAME)
    layout = zero_shot_accuracy(model, tokenizer, load_crops(root, 64), prompts="single")
    lvis = load_dataset_crops("zs_lvis", 64, min_size=0)
    assert lvis["groups"] == ("r", "c", "f")
    assert zero_shot_accuracy(model, tokenizer, lvis, prompts="single") == layout
    coco = zero_shot_accuracy(
        model, tokenizer, load_dataset_crops("zs_coco", 64, min_size=0), prompts="single"
    )
    assert coco["n_novel"] == layout["n_r"] and coco["n_base"] == layout["n_c"] + layout["n_f"]
    assert coco["novel"] == layout["r"] and coco["all"] == layout["all"]


def test_setup_ovdet_cfg_registers_the_flag_specs(coco_files, tmp_path):
    """What every launch worker runs first: the --register-dataset specs land in the config (so
    they are in OUTPUT_DIR/config.yaml) and are registered."""
    from detectron2.engine import default_argument_parser

    from ovdet_plugin.engine import setup_ovdet_cfg

    root, paths = coco_files
    spec = f"name=worker_val,format=coco,json={paths['val']},images={root},novel=star"
    parser = add_dataset_arguments(default_argument_parser())
    args = parser.parse_args(
        ["--register-dataset", spec, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"]
    )
    if "worker_val" in DatasetCatalog.list():
        DatasetCatalog.remove("worker_val")
    cfg = setup_ovdet_cfg(args)
    assert list(cfg.MODEL.OVD.CUSTOM_DATASETS) == [spec]
    assert "worker_val" in DatasetCatalog.list()
    assert spec in open(tmp_path / "config.yaml").read()
