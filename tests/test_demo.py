"""tools/demo.py: a typed vocabulary on a folder of images, pictures drawn by the Visualizer."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
from conftest import REPO_ROOT


def test_demo_on_a_folder_writes_one_png_per_image(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(2):
        image = rng.randint(0, 255, (70, 90, 3)).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i}.jpg"), image)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml"),
        "--vocabulary", "cat, remote control, sofa", "--random-weights",
        "--input", str(folder), "--output", str(out), "--confidence-threshold", "0.0",
        "--top-k", "2", "--save-detections",
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["detections.json", "img0.png", "img1.png"]
    # --save-detections: what is drawn (--top-k 2 per picture), named from the typed vocabulary
    records = json.loads((out / "detections.json").read_text())
    assert {r["picture"] for r in records} == {"img0.png", "img1.png"}
    for picture in ("img0.png", "img1.png"):
        assert len([r for r in records if r["picture"] == picture]) == 2
    for r in records:
        assert r["file_name"] == str(folder / r["picture"].replace(".png", ".jpg"))
        assert r["category"] in ("cat", "remote control", "sofa") and r["score"] >= 0.0
        x, y, w, h = r["bbox"]
        assert -1e-3 <= x and x + w <= 90 + 1e-3 and -1e-3 <= y and y + h <= 70 + 1e-3 and w >= 0
    drawn = cv2.imread(str(out / "img0.png"))
    assert drawn.shape == (70, 90, 3)
    assert "Test vocabulary set: 3 classes" in result.stdout + result.stderr
    # encoded with the build's text tower (kept for the swap), not a second random CLIP
    assert "not the build's" not in result.stdout + result.stderr


def test_demo_rejects_a_missing_input(tmp_path):
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml"),
        "--input", str(tmp_path / "nope.jpg"), "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT)
    )
    assert result.returncode != 0 and "neither an image file nor a folder" in result.stderr
