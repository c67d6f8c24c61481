"""tools/demo.py: a typed vocabulary on a folder of images, pictures drawn by the Visualizer."""

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
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["img0.png", "img1.png"]
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
