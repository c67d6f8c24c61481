"""Label precision of drawn detections (ovdet_plugin.evaluation.label_precision) on a hand-made
case: the drawing threshold, the per-image top-k, the IoU 0.5 boundary, a wrong label, the rare
share, and a restriction to some images."""

import json

import pytest

from ovdet_plugin.evaluation import label_precision
from ovdet_plugin.evaluation.label_precision import drawn_detections

GT = {
    "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
    "categories": [
        {"id": 1, "name": "crown", "frequency": "r"},
        {"id": 2, "name": "tree", "frequency": "f"},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20]},
    ],
}


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


DETS = [
    det(1, 1, [0, 0, 10, 20], 0.9),  # rare, IoU exactly 0.5: correct
    det(1, 2, [0, 0, 10, 10], 0.8),  # on the crown, labelled tree: wrong label
    det(1, 1, [0, 0, 10, 21], 0.7),  # rare, IoU 100/210 < 0.5: wrong
    det(1, 2, [20, 20, 10, 10], 0.049),  # correct, but below the 0.05 threshold
    det(2, 2, [0, 0, 20, 20], 0.05),  # score == threshold: drawn, correct (third of image 2)
    det(2, 2, [1, 1, 20, 20], 0.6),  # correct (a duplicate on the same tree counts)
    det(2, 1, [0, 0, 20, 20], 0.3),  # rare label on a tree: wrong
]


def test_threshold_top_k_iou_boundary_and_rare_share():
    r = label_precision(DETS, GT, score_threshold=0.05, top_k=3)
    assert (r["n"], r["correct"]) == (6, 3)
    assert r["precision"] == pytest.approx(50.0)
    assert (r["n_rare"], r["rare_correct"]) == (3, 1)
    assert r["rare_precision"] == pytest.approx(100 / 3)
    assert r["rare_correct_images"] == [1] and r["images"] == 2
    # top 2 per image: image 1 keeps 0.9 and 0.8, image 2 keeps 0.6 and 0.3
    r = label_precision(DETS, GT, score_threshold=0.05, top_k=2)
    assert (r["n"], r["correct"], r["n_rare"], r["rare_correct"]) == (4, 2, 2, 1)
    # no threshold, no top-k: the 0.049 box is drawn (and correct)
    r = label_precision(DETS, GT, score_threshold=0.0, top_k=0)
    assert (r["n"], r["correct"]) == (7, 4)
    # a stricter IoU: the exact-0.5 crown is no longer correct
    r = label_precision(DETS, GT, score_threshold=0.05, top_k=3, iou_threshold=0.51)
    assert (r["correct"], r["rare_correct"], r["rare_correct_images"]) == (2, 0, [])


def test_restricted_images_files_and_nothing_drawn(tmp_path):
    dets, gt = tmp_path / "results.json", tmp_path / "val.json"
    dets.write_text(json.dumps(DETS))
    gt.write_text(json.dumps(GT))
    r = label_precision(str(dets), str(gt), score_threshold=0.05, top_k=3, image_ids=[2])
    assert (r["n"], r["correct"], r["n_rare"], r["rare_correct"], r["images"]) == (3, 2, 1, 0, 1)
    r = label_precision(DETS, GT, score_threshold=0.95)
    assert r["n"] == 0 and r["precision"] is None and r["rare_precision"] is None


def test_drawn_detections_follow_the_demo_selection():
    drawn = drawn_detections(DETS, 0.05, top_k=2)
    assert [(d["image_id"], d["score"]) for d in drawn] == [(1, 0.9), (1, 0.8), (2, 0.6), (2, 0.3)]
