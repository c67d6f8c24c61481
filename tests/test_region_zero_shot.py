"""Region zero-shot accuracy (ovdet_plugin.evaluation.region_zero_shot): ground-truth boxes scored
inside their whole images, classified by text embeddings, per frequency group."""

import json
import os
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from ovdet_plugin.config import get_ovdet_cfg
from ovdet_plugin.data.synthetic import generate_synthetic_dataset
from ovdet_plugin.evaluation.region_zero_shot import (
    answer_bias,
    boxed_images,
    method_region_zero_shot,
    region_zero_shot_accuracy,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("regions"))
    generate_synthetic_dataset(root, num_train=4, num_val=8, num_pretrain=0, progress=False)
    with open(os.path.join(root, "val.json")) as f:
        return root, json.load(f)


class BoxLookupScorer(torch.nn.Module):
    """Returns, for each box, the text row of the category whose ground-truth box it is (or of
    ``constant`` for every box): a scorer whose accuracy is known."""

    def __init__(self, val, text, constant=None):
        super().__init__()
        index = {c["id"]: i for i, c in enumerate(sorted(val["categories"], key=lambda c: c["id"]))}
        self.by_box = {tuple(round(v, 3) for v in a["bbox"]): index[a["category_id"]]
                       for a in val["annotations"]}  # fmt: skip
        self.text, self.constant = text, constant
        self.seen_shapes = []

    def forward(self, images, features=None, boxes=(), box_features=None):
        self.seen_shapes.append(tuple(images.shape))
        (b,) = boxes
        rows = []
        for x0, y0, x1, y1 in b.tolist():
            key = tuple(round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0))
            rows.append(self.constant if self.constant is not None else self.by_box[key])
        return self.text[rows]


def test_a_scorer_that_names_every_box_scores_100_and_a_constant_one_its_class_share(dataset):
    root, val = dataset
    k = len(val["categories"])
    text = F.normalize(torch.randn(k, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    right = BoxLookupScorer(val, text)
    acc = region_zero_shot_accuracy(root, text, right)
    assert acc["all"] == 100.0 and acc["n_all"] == len(val["annotations"])
    assert right.seen_shapes[0][:2] == (1, 3)  # one whole image at a time
    first = sorted(val["categories"], key=lambda c: c["id"])[0]
    share = 100.0 * sum(a["category_id"] == first["id"] for a in val["annotations"])
    constant = region_zero_shot_accuracy(root, text, BoxLookupScorer(val, text, constant=0))
    assert constant["all"] == pytest.approx(share / len(val["annotations"]))
    # the answer given most often, and its share: all of it for the constant scorer, the
    # commonest true class's share for the right one
    assert (constant["top_name"], constant["top_share"]) == (first["name"], 100.0)
    assert constant["even_share"] == pytest.approx(100.0 / k)
    counts = Counter(a["category_id"] for a in val["annotations"])
    assert acc["top_share"] == pytest.approx(100.0 * max(counts.values()) / sum(counts.values()))
    names = {c["id"]: c["name"] for c in val["categories"]}
    assert acc["top_name"] in {names[c] for c, n in counts.items() if n == max(counts.values())}


def test_boxed_images_yields_each_annotated_image_of_the_first_n_with_xyxy_boxes(dataset):
    root, val = dataset
    val = dict(
        val, annotations=[a for a in val["annotations"] if a["image_id"] != val["images"][0]["id"]]
    )
    items = list(boxed_images(val, root, limit=3))
    assert len(items) == 2  # the first image has no annotation left
    for (bgr, anns, boxes), img in zip(items, val["images"][1:3]):
        assert bgr.shape == (img["height"], img["width"], 3) and bgr.dtype.name == "uint8"
        assert {a["image_id"] for a in anns} == {img["id"]}
        for (x0, y0, x1, y1), a in zip(boxes.tolist(), anns):
            assert [x0, y0, x1 - x0, y1 - y0] == pytest.approx(a["bbox"])
    assert len(list(boxed_images(val, root))) == len(val["images"]) - 1


def test_answer_bias_names_the_most_frequent_answer():
    assert answer_bias([3, 1, 3, 3], {1: "star", 3: "anchor"}) == {
        "top_name": "anchor",
        "top_share": 75.0,
        "even_share": 50.0,
    }
    assert answer_bias([], {1: "star"}) == {}


def test_text_rows_must_match_the_categories(dataset):
    root, val = dataset
    text = torch.eye(len(val["categories"]) - 1, 8)
    with pytest.raises(ValueError, match="text embeddings"):
        region_zero_shot_accuracy(root, text, BoxLookupScorer(val, text))


def test_a_method_without_a_tower_scorer_is_refused(dataset):
    root, _ = dataset
    cfg = get_ovdet_cfg(
        os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "vild.yaml")
    )
    with pytest.raises(ValueError, match="not a CLIP tower scorer"):
        method_region_zero_shot(cfg, root)


def test_the_script_scores_a_config_as_its_scorer_by_name(dataset, tmp_path, one_torch_thread):
    """benchmarks/region_zero_shot.py: the scorer of configs/synthetic/fvlm.yaml (attnpool, as the
    detector builds it) gives the same figure as the attnpool scorer by name on the checkpoint."""
    from benchmarks.region_zero_shot import main
    from ovdet_plugin.clip import build_clip_model

    root, _ = dataset
    torch.manual_seed(0)
    path = str(tmp_path / "rn.pt")
    torch.save(build_clip_model("ovdet-tiny-rn64").state_dict(), path)
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "fvlm.yaml")
    # (the config crops C4 with Detectron2's aligned RoIAlign; the scorer by name, C5 officially)
    by_config = main(["--dataset", root, "--config-file", config,
                      "MODEL.OVD.CLIP.PRETRAINED", path,
                      "MODEL.OVD.VLM_SCORER.CROP_CONVENTION", "official",
                      "MODEL.OVD.VLM_SCORER.CROP_STAGE", "res5"])  # fmt: skip
    # the config's test input is 160 px: the same images at 1.25x (the fixture's are 128 px)
    by_name = main(["--dataset", root, "--checkpoint", path, "--scorer", "attnpool",
                    "--model-name", "ovdet-tiny-rn64", "--scale", "1.25"])  # fmt: skip
    assert by_config["n_all"] == by_name["n_all"] > 0
    assert by_config["all"] == pytest.approx(by_name["all"])


def test_scale_resizes_each_image_and_its_boxes_alike(dataset):
    """The scale probe: images resized (sides rounded to the divisibility), boxes by the same
    factors."""
    root, val = dataset
    text = torch.eye(len(val["categories"]), 8)

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, images, features=None, boxes=()):
            self.calls.append((tuple(images.shape), boxes[0].clone()))
            return text[[0] * len(boxes[0])]

    plain, scaled = Recorder(), Recorder()
    region_zero_shot_accuracy(root, text, plain)
    region_zero_shot_accuracy(root, text, scaled, scale=1.25, size_divisibility=32)
    assert len(plain.calls) == len(scaled.calls) > 0
    for (shape, boxes), (shape2, boxes2) in zip(plain.calls, scaled.calls):
        side = round(shape[-1] * 1.25 / 32) * 32  # 128 -> 160
        assert shape2 == (1, 3, side, side)
        torch.testing.assert_close(boxes2, boxes * side / shape[-1])


def test_test_size_resizes_as_the_detectors_shortest_edge_resize(dataset):
    """``test_size`` (a config's INPUT.MIN/MAX_SIZE_TEST) scales each image as Detectron2's
    ResizeShortestEdge does, then by ``scale``; (128, 128) leaves the 128-px images as they are."""
    from detectron2.data.transforms import ResizeShortestEdge

    root, val = dataset
    text = torch.eye(len(val["categories"]), 8)
    shapes = {}
    for name, kwargs in {
        "own": {},
        "same": {"test_size": (128, 128)},
        "160": {"test_size": (160, 160)},
        "capped": {"test_size": (200, 160)},  # the long-side cap wins
        "160x1.2": {"test_size": (160, 160), "scale": 1.2},
    }.items():
        calls = []

        def scorer(images, features=None, boxes=(), calls=calls):
            calls.append(tuple(images.shape[-2:]))
            return text[[0] * len(boxes[0])]

        region_zero_shot_accuracy(root, text, scorer, size_divisibility=32, **kwargs)
        shapes[name] = calls
    h, w = shapes["own"][0]
    assert shapes["same"] == shapes["own"]
    resize = ResizeShortestEdge(160, max_size=160)
    assert shapes["160"][0] == resize.get_output_shape(h, w, 160, 160) == (160, 160)
    assert shapes["capped"] == shapes["160"]
    assert shapes["160x1.2"][0] == (192, 192)  # 128 * 1.25 * 1.2


def test_an_unreadable_image_and_a_bgr_config_are_refused(dataset, tmp_path):
    import shutil

    root, val = dataset
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / val["images"][0]["file_name"]).write_bytes(b"not a png")
    text = torch.eye(len(val["categories"]), 8)
    with pytest.raises(ValueError, match="Cannot read image .*missing or corrupt"):
        region_zero_shot_accuracy(str(broken), text, BoxLookupScorer(val, text))
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "fvlm.yaml")
    cfg = get_ovdet_cfg(config, ["INPUT.FORMAT", "BGR"])
    with pytest.raises(ValueError, match="reads RGB images"):
        method_region_zero_shot(cfg, root)
