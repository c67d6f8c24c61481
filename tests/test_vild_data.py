"""ViLD-image data: the resumable shard store, the mapper that moves the precomputed proposals
with the image's augmentation, and tools/precompute_vild_embeddings.py."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.data.dataset_mapper import OVDDatasetMapper
from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset
from ovdet_plugin.data.vild_embeddings import ViLDEmbeddingStore, ViLDEmbeddingWriter


def test_writer_and_store_roundtrip_and_resume(tmp_path):
    writer = ViLDEmbeddingWriter(str(tmp_path), embed_dim=4, shard_size=2)
    boxes = {i: torch.tensor([[i, 0.0, i + 5, 5]]) for i in range(5)}
    embeds = {i: F.normalize(torch.randn(1, 4), dim=1) for i in range(5)}
    for i in range(3):
        writer.add(i, boxes[i], embeds[i])  # the first shard (2 images) is flushed here
    assert len(os.listdir(tmp_path)) == 2  # index + one shard: image 2 is still pending
    # An interrupted run keeps what was flushed; a new writer resumes after it.
    resumed = ViLDEmbeddingWriter(str(tmp_path), embed_dim=4, shard_size=2)
    assert resumed.done_ids() == {"0", "1"}
    for i in range(2, 5):
        resumed.add(i, boxes[i], embeds[i])
    resumed.flush()
    store = ViLDEmbeddingStore(str(tmp_path))
    assert len(store) == 5 and 4 in store
    got_boxes, got_embeds = store.get(3)
    np.testing.assert_allclose(got_boxes, boxes[3].numpy())
    torch.testing.assert_close(got_embeds, embeds[3], atol=1e-3, rtol=0)  # stored as float16
    with pytest.raises(KeyError, match="re-run tools/precompute_vild_embeddings.py"):
        store.get(99)
    with pytest.raises(ValueError, match="holds 4-d embeddings"):
        ViLDEmbeddingWriter(str(tmp_path), embed_dim=8)


def test_missing_store_names_the_tool(tmp_path):
    with pytest.raises(FileNotFoundError, match="precompute_vild_embeddings.py"):
        ViLDEmbeddingStore(str(tmp_path / "nothing"))


def _image_dict(tmp_path):
    import cv2

    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.zeros((40, 60, 3), dtype=np.uint8))
    anno = {"bbox": [10, 5, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    return {"file_name": path, "height": 40, "width": 60, "image_id": 7, "annotations": [anno]}


def test_mapper_moves_proposals_with_the_augmentation(tmp_path):
    writer = ViLDEmbeddingWriter(str(tmp_path / "emb"), embed_dim=4)
    writer.add(7, torch.tensor([[10.0, 5, 30, 15], [50, 0, 70, 40]]), torch.eye(4)[:2])
    writer.flush()
    mapper = OVDDatasetMapper(
        is_train=True,
        augmentations=[T.Resize((80, 120)), T.RandomFlip(prob=1.0)],  # x2, then flip
        image_format="BGR",
        vild_store=str(tmp_path / "emb"),
    )
    out = mapper(_image_dict(tmp_path))
    vp = out["vild_proposals"]
    # box 1: x2 -> [20, 10, 60, 30], flipped in a 120-wide image -> [60, 10, 100, 30];
    # box 2: x2 -> [100, 0, 140, 80], flipped -> [-20, 0, 20, 80], clipped -> [0, 0, 20, 80].
    want = torch.tensor([[60.0, 10, 100, 30], [0, 0, 20, 80]])
    torch.testing.assert_close(vp.proposal_boxes.tensor, want)
    torch.testing.assert_close(
        out["instances"].gt_boxes.tensor, torch.tensor([[60.0, 10, 100, 30]])
    )
    assert vp.clip_embeds.shape == (2, 4)


def test_precompute_tool_with_a_proposal_file(tmp_path):
    root = tmp_path / "d2"
    generate_synthetic_dataset(
        root / "ovdet_synthetic", num_train=3, num_val=1, num_pretrain=0, image_size=64,
        progress=False,
    )  # fmt: skip
    train = json.load(open(root / "ovdet_synthetic" / "train.json"))
    ids = [im["id"] for im in train["images"]]
    proposals = {
        "ids": ids,
        "boxes": [np.array([[0, 0, 32, 32], [8, 8, 40, 56]], dtype=np.float32) for _ in ids],
        "objectness_logits": [np.array([1.0, 0.0], dtype=np.float32) for _ in ids],
        "bbox_mode": BoxMode.XYXY_ABS,
    }
    with open(tmp_path / "proposals.pkl", "wb") as f:
        pickle.dump(proposals, f)
    torch.manual_seed(0)
    weights = tmp_path / "tiny_clip.pt"
    clip = build_clip_model("ovdet-tiny-vit")
    torch.save(clip.state_dict(), weights)
    out = tmp_path / "emb"
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "precompute_vild_embeddings.py"),
        "--dataset", "ovdet_synthetic_train", "--proposals", str(tmp_path / "proposals.pkl"),
        "--clip-model", "ovdet-tiny-vit", "--clip-pretrained", str(weights),
        "--output", str(out), "--shard-size", "2", "--device", "cpu",
    ]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONPATH=REPO_ROOT)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    store = ViLDEmbeddingStore(str(out))
    assert len(store) == len(ids)
    # the dataset it was computed for is recorded, and checked against the training data
    assert store.dataset["name"] == "ovdet_synthetic_train" and store.dataset["num_images"] == 3
    names = {im["id"]: im["file_name"] for im in train["images"]}
    store.check_dataset([{"image_id": i, "file_name": names[i]} for i in ids])
    with pytest.raises(ValueError, match="computed for dataset 'ovdet_synthetic_train'"):
        store.check_dataset([{"image_id": ids[0], "file_name": "another.png"}], ["other"])
    boxes, embeds = store.get(ids[0])
    np.testing.assert_allclose(boxes, proposals["boxes"][0])
    torch.testing.assert_close(embeds.norm(dim=1), torch.ones(2), atol=1e-3, rtol=0)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "0 of 3 images left" in again.stdout  # resumed: none left


def test_large_scale_jitter_from_config(tmp_path):
    from detectron2.config import get_cfg

    import ovdet_plugin

    cfg = ovdet_plugin.add_ovdet_config(get_cfg())
    cfg.MODEL.OVD.INPUT.LSJ_SIZE = 64
    mapper = OVDDatasetMapper(cfg, is_train=True)
    kinds = [type(a).__name__ for a in mapper.augmentations.augs]
    assert kinds == ["ResizeScale", "FixedSizeCrop", "RandomFlip"]
    out = mapper(_image_dict(tmp_path))
    assert tuple(out["image"].shape[1:]) == (64, 64)  # cropped or padded to the fixed size
    assert "vild_proposals" not in out  # no EMBEDDINGS_DIR: plain DatasetMapper behaviour
    test_mapper = OVDDatasetMapper(cfg, is_train=False)
    assert "ResizeScale" not in [type(a).__name__ for a in test_mapper.augmentations.augs]


def test_precompute_tool_with_a_trained_rpn(tmp_path):
    """Proposals from a detector checkpoint's RPN (run at the test-time size), boxes mapped back
    to original image pixels."""
    from conftest import load_test_config
    from detectron2.modeling import build_model

    root = tmp_path / "d2"
    generate_synthetic_dataset(
        root / "ovdet_synthetic", num_train=3, num_val=1, num_pretrain=0, image_size=64,
        progress=False,
    )  # fmt: skip
    torch.manual_seed(0)
    detector = build_model(load_test_config("tiny_rcnn"))
    weights = tmp_path / "detector.pth"
    torch.save({"model": detector.state_dict()}, weights)
    out = tmp_path / "emb"
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "precompute_vild_embeddings.py"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_rcnn.yaml"),
        "--dataset", "ovdet_synthetic_train", "--clip-model", "ovdet-tiny-vit",
        "--output", str(out), "--max-proposals", "10", "--device", "cpu",
        "MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    ]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONPATH=REPO_ROOT)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    store = ViLDEmbeddingStore(str(out))
    assert len(store) == 3
    train = json.load(open(root / "ovdet_synthetic" / "train.json"))
    boxes, embeds = store.get(train["images"][0]["id"])
    assert 0 < len(boxes) <= 10 and embeds.shape == (len(boxes), 64)
    # the model saw a 128-px image; the stored boxes are in the original 64-px image
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 64 and boxes[:, [1, 3]].max() <= 64
