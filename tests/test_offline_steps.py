"""The offline steps on many processes (Detectron2's ``launch``, gloo on the CPU): ViLD's crop
embedding precompute and the text-embedding dump give the same result with 1 and 2 processes,
resume, and the precompute skips (and reports) failing images without losing finished work."""

import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import torch
from conftest import REPO_ROOT
from detectron2.structures import BoxMode

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset
from ovdet_plugin.data.vild_embeddings import ViLDEmbeddingStore


def _run(tool, *argv, env_extra=None):
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", tool), *argv]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _precompute_inputs(tmp_path):
    """5 generated images registered through a spec (as a user would), a proposal file where
    image 0 has no proposal, image 1 unreadable, and a tiny CLIP checkpoint."""
    root = tmp_path / "data"
    generate_synthetic_dataset(
        str(root), num_train=5, num_val=1, num_pretrain=0, image_size=64, progress=False
    )
    train = json.load(open(root / "train.json"))
    images = sorted(train["images"], key=lambda im: im["id"])
    (root / images[1]["file_name"]).write_bytes(b"not an image")
    rng = np.random.default_rng(0)
    boxes = []
    for k in range(len(images)):
        xy = rng.uniform(0, 30, (4, 2))
        wh = rng.uniform(8, 30, (4, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32)[: 0 if k == 0 else 4])
    proposals = {
        "ids": [im["id"] for im in images],
        "boxes": boxes,
        "objectness_logits": [np.zeros(len(b), dtype=np.float32) for b in boxes],
        "bbox_mode": BoxMode.XYXY_ABS,
    }
    with open(tmp_path / "proposals.pkl", "wb") as f:
        pickle.dump(proposals, f)
    torch.manual_seed(0)
    torch.save(build_clip_model("ovdet-tiny-vit").state_dict(), tmp_path / "clip.pt")
    spec = f"name=my_shapes_train,format=lvis,json={root}/train.json,images={root}"
    args = [
        "--register-dataset", spec, "--dataset", "my_shapes_train",
        "--proposals", str(tmp_path / "proposals.pkl"), "--clip-model", "ovdet-tiny-vit",
        "--clip-pretrained", str(tmp_path / "clip.pt"), "--shard-size", "1", "--device", "cpu",
    ]  # fmt: skip
    return images, args


def test_precompute_on_two_processes_equals_one_and_skips_failing_images(
    tmp_path, one_torch_thread
):
    images, args = _precompute_inputs(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    tool = _load_tool("precompute_vild_embeddings.py")
    log1 = _in_process(tool, args + ["--output", str(one)])  # one process: launch calls main
    r2 = _run(
        "precompute_vild_embeddings.py", *args, "--output", str(two), "--num-gpus", "2"
    )  # the dataset spec is registered inside each launch worker
    assert r2.returncode == 0, r2.stderr[-3000:]
    for log in (log1, r2.stdout + r2.stderr):
        assert "Skipped 2 images" in log, log[-3000:]
        assert os.path.basename(images[0]["file_name"]) in log  # names in the summary
        assert os.path.basename(images[1]["file_name"]) in log
        assert "no proposals" in log
    a, b = ViLDEmbeddingStore(str(one)), ViLDEmbeddingStore(str(two))
    good = [im["id"] for im in images[2:]]
    assert len(a) == len(b) == 3 and all(i in a and i in b for i in good)
    for i in good:
        boxes_a, emb_a = a.get(i)
        boxes_b, emb_b = b.get(i)
        np.testing.assert_array_equal(boxes_a, boxes_b)
        torch.testing.assert_close(emb_a, emb_b, atol=1e-3, rtol=0)  # float16 storage
    shards = sorted(n for n in os.listdir(two) if n.startswith("shard-"))
    assert any("rank0" in n for n in shards) and any("rank1" in n for n in shards)
    assert [n for n in os.listdir(two) if n.startswith("index")] == ["index.json"]  # merged
    index = json.load(open(two / "index.json"))
    assert set(index["failed"]) == {str(images[0]["id"]), str(images[1]["id"])}
    try:
        a.get(images[0]["id"])
        raise AssertionError("a skipped image must not have embeddings")
    except KeyError as e:
        assert "skipped it (ValueError: no proposals)" in str(e)
    # resume: only the two failed images are tried again; nothing finished is redone
    again = _in_process(tool, args + ["--output", str(two)])
    assert "2 of 5 images left to encode" in again
    assert sorted(n for n in os.listdir(two) if n.startswith("shard-")) == shards


def _load_tool(name):
    path = os.path.join(REPO_ROOT, "tools", name)
    spec = importlib.util.spec_from_file_location(name[:-3] + "_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_process(tool, argv) -> str:
    """Run a tool's ``main`` in this process (what ``launch`` does for one process); returns
    the messages of the plugin's logger."""
    messages = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    plugin = logging.getLogger("ovdet_plugin")
    plugin.addHandler(handler)
    try:
        tool.main(tool.parse_args(argv))
    finally:
        plugin.removeHandler(handler)
    return "\n".join(messages)


def test_dump_text_embeddings_on_two_processes_equals_one(tmp_path, one_torch_thread):
    common = [
        "--vocabulary", "cat, remote control, sofa, hot dog, lamp", "--model", "ovdet-tiny-vit",
        "--prompts", "clip", "--chunk-size", "2", "--cache-dir", "",
    ]  # fmt: skip
    tool = _load_tool("dump_text_embeddings.py")
    log1 = _in_process(tool, common + ["--output", str(tmp_path / "one.pt")])
    r2 = _run(
        "dump_text_embeddings.py", *common, "--output", str(tmp_path / "two.pt"), "--num-gpus", "2"
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "5 classes in 3 chunks" in log1
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one["names"] == two["names"] and one["embeddings"].shape == (5, 64)
    assert torch.equal(one["embeddings"], two["embeddings"])
    assert not os.path.exists(str(tmp_path / "two.pt") + ".parts")  # joined and cleaned up


def test_dump_text_embeddings_resumes_from_written_chunks(tmp_path):
    tool = _load_tool("dump_text_embeddings.py")
    out = str(tmp_path / "vocab.pt")
    argv = ["--vocabulary", "cat, sofa, lamp", "--model", "ovdet-tiny-vit", "--prompts", "single"]
    args = tool.parse_args(argv + ["--chunk-size", "2", "--cache-dir", "", "--output", out])
    # a chunk left by a killed run (marked values) and one written with other options
    os.makedirs(out + ".parts")
    marked = torch.nn.functional.normalize(torch.ones(2, 64), dim=1)
    kept = {"embeddings": marked, "names": ["cat", "sofa"]}
    torch.save(
        {**kept, "options_json": json.dumps(tool._options(args))},
        out + ".parts/chunk-00000-of-00002.pt",
    )
    stale = {"embeddings": torch.zeros(1, 64), "names": ["lamp"]}
    other = dict(tool._options(args), prompts="vild")
    torch.save({**stale, "options_json": json.dumps(other)}, out + ".parts/chunk-00001-of-00002.pt")
    tool.main(args)
    emb = torch.load(out, weights_only=True)["embeddings"]
    assert torch.equal(emb[:2], marked)  # reused, not recomputed
    assert emb[2].abs().sum() > 0 and torch.allclose(emb[2].norm(), torch.tensor(1.0))  # redone


def test_parts_resume_across_process_counts_and_skipped_images_train_without_distillation(
    tmp_path,
):
    """Part indexes of a killed 2-process run count as done for a 1-process resume; an image the
    tool skipped reaches training without distillation RoIs instead of failing the loader."""
    import cv2
    from detectron2.data import transforms as T

    from ovdet_plugin.data.dataset_mapper import OVDDatasetMapper
    from ovdet_plugin.data.vild_embeddings import ViLDEmbeddingWriter, merge_index_parts

    out = str(tmp_path / "emb")
    for rank, image_id in ((0, 1), (1, 2)):  # two processes, killed before the merge
        w = ViLDEmbeddingWriter(out, embed_dim=4, part=f"rank{rank}")
        w.add(image_id, torch.tensor([[0.0, 0, 10, 10]]), torch.eye(4)[:1])
        w.flush()
    w = ViLDEmbeddingWriter(out, embed_dim=4, part="rank0")  # resumed with one process
    assert w.done_ids() == {"1", "2"}
    w.add_failure(3, "ValueError: no proposals")
    w.flush()
    merged = merge_index_parts(out)
    assert sorted(os.listdir(out)) == ["index.json", "shard-rank0-00000.pt", "shard-rank1-00000.pt"]
    assert merged["failed"] == {"3": "ValueError: no proposals"}
    store = ViLDEmbeddingStore(out)
    assert len(store) == 2 and store.skip_reason(3) == "ValueError: no proposals"
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((20, 20, 3), dtype=np.uint8))
    anno = {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    mapper = OVDDatasetMapper(
        is_train=True, augmentations=[T.NoOpTransform()], image_format="BGR", vild_store=store
    )

    def record(image_id):
        return {"file_name": str(tmp_path / "img.png"), "height": 20, "width": 20,
                "image_id": image_id, "annotations": [dict(anno)]}  # fmt: skip

    assert "vild_proposals" not in mapper(record(3))
    assert len(mapper(record(1))["vild_proposals"]) == 1
