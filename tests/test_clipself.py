"""CLIPSelf (methods §3.1-3.7): grid sampling, crops, RoI features, loss, training, ensembling."""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.clip.crops import (
    crop_pixels,
    enlarge_boxes,
    normalize_for_clip,
    pixel_boxes,
    resize_max_size,
)
from ovdet_plugin.pretraining.clipself import (
    CLIPSelfImageDataset,
    CLIPSelfModel,
    clipself_loss,
    ensemble_state_dict,
    grid_choices,
    load_proposals,
    region_contrastive_loss,
    roi_features,
    sample_grid_boxes,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grid_choices_enumeration():
    choices = grid_choices(6)
    assert (1, 1) in choices and (6, 6) in choices and (1, 2) in choices and (2, 1) in choices
    assert (1, 3) not in choices and (4, 1) not in choices  # aspect beyond 2:1
    for m, n in choices:
        assert 1 <= m <= 6 and 1 <= n <= 6 and 0.5 <= n / m <= 2
    # exactly the pairs with n in [floor((m+1)/2), min(2m, 6)]
    assert len(choices) == sum(min(2 * m, 6) - (m + 1) // 2 + 1 for m in range(1, 7))


def test_grid_sampling_limits_over_many_seeds():
    seen = set()
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        w, h = 40 + seed % 50, 30 + seed % 70
        boxes = sample_grid_boxes(w, h, max_split=6, max_boxes=20, generator=g)
        assert 1 <= len(boxes) <= 20
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (bw > 0).all() and (bh > 0).all()
        assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
        assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
        n_cols = round(w / bw.float().mean().item())
        n_rows = round(h / bh.float().mean().item())
        assert n_rows <= 6 and n_cols <= 6
        seen.add(len(boxes))
    assert 20 in seen and 1 in seen  # truncated big grids and the 1x1 grid both occur


def test_grid_cells_tile_the_image_and_crops_cover_them_exactly():
    img = torch.arange(3 * 30 * 50, dtype=torch.float32).reshape(3, 30, 50)
    for seed in range(20):
        boxes = sample_grid_boxes(
            50, 30, max_boxes=36, generator=torch.Generator().manual_seed(seed)
        )
        cover = torch.zeros(30, 50, dtype=torch.int64)
        for crop, (x0, y0, x1, y1) in zip(crop_pixels(img, boxes), boxes.int().tolist()):
            assert torch.equal(crop, img[:, y0:y1, x0:x1])
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()  # every pixel in exactly one cell


def test_teacher_crop_scale_and_resize_pad():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 30.0]])

    def scale_boxes(b, scale):
        return pixel_boxes(enlarge_boxes(b, scale, width=100, height=100), width=100, height=100)

    same = scale_boxes(boxes, 1.0)
    assert torch.equal(same, boxes)
    big = scale_boxes(boxes, 1.5)
    torch.testing.assert_close(big, torch.tensor([[7.0, 5.0, 23.0, 35.0]]))  # 1.5x about the centre
    clipped = scale_boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 1.5)
    assert clipped[0, :2].tolist() == [0.0, 0.0]
    # long side resized to the tower size, centred zero padding
    crop = torch.ones(3, 10, 20)
    out = resize_max_size(crop, 64)
    assert out.shape == (3, 64, 64)
    assert (out[:, 16:48, :] > 0.99).all() and (out[:, :16] == 0).all() and (out[:, 48:] == 0).all()


def test_teacher_crop_styles():
    """The padded style keeps the crop's aspect ratio (zero bands), the stretched style fills the
    square with the box's pixels; an unknown style is refused by name."""
    image = torch.zeros(3, 64, 64)
    image[:, 20:30, 10:50] = 1.0  # a 40 x 10 white bar, its box below
    boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0]])
    padded = _model(teacher_crop_scale=1.0).teacher_inputs(image, boxes)
    model = _model(teacher_crop_scale=1.0, teacher_crop_style="stretched")
    stretched = model.teacher_inputs(image, boxes)
    size = model.teacher_size
    assert padded.shape == stretched.shape == (1, 3, size, size)
    white = normalize_for_clip(torch.ones(1, 3, 1, 1))[0, :, 0, 0]
    black = normalize_for_clip(torch.zeros(1, 3, 1, 1))[0, :, 0, 0]
    # aligned RoIAlign blends the pixels just outside the box into the border samples: half a
    # pixel is 0.5 / (10 / size) rows of the 10-px-high box, 2 columns of the 40-px-wide one
    inner = stretched[0, :, 8:-8, 2:-2]
    torch.testing.assert_close(inner, white[:, None, None].expand_as(inner))  # no padding band
    torch.testing.assert_close(padded[0, :, 0, size // 2], black)  # the zero band above
    torch.testing.assert_close(padded[0, :, size // 2, size // 2], white, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="TEACHER_CROP_STYLE"):
        _model(teacher_crop_style="square")


def test_roi_features_1x1_roialign():
    dense = F.normalize(torch.randn(2, 8, 4, 4), dim=1)
    # a box exactly covering one stride-16 cell reads that cell
    feats = roi_features(dense, [torch.tensor([[16.0, 32.0, 32.0, 48.0]]), torch.zeros(0, 4)], 16)
    torch.testing.assert_close(feats[0], dense[0, :, 2, 1])
    assert feats.shape == (1, 8)


def test_loss_values():
    a = F.normalize(torch.randn(5, 8), dim=-1)
    assert abs(clipself_loss(a, a).item()) < 1e-6
    assert abs(clipself_loss(a, -a).item() - 2.0) < 1e-6


def test_region_contrastive_loss():
    """Each student region must pick its own teacher crop: matched pairs at a high logit scale
    give a loss near 0, the same embeddings paired in another order a high one."""
    a = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert region_contrastive_loss(a, a, 100.0).item() < 0.05
    assert region_contrastive_loss(a, a.roll(1, 0), 100.0).item() > 5.0
    # the logit scale enters as a product: scale 1 is the plain softmax of cosines
    expected = F.cross_entropy(a @ a.t(), torch.arange(6))
    torch.testing.assert_close(region_contrastive_loss(a, a, 1.0), expected)


def test_ensemble_weights():
    s = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    t = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([5])}
    out = ensemble_state_dict(s, t, 0.7)
    torch.testing.assert_close(out["w"], torch.tensor([0.7 * 1 + 0.3 * 3, 0.7 * 2 + 0.3 * 6]))
    assert torch.equal(out["n"], s["n"])


def _model(**kw):
    torch.manual_seed(0)
    clip = build_clip_model("ovdet-tiny-vit")
    kw.setdefault("image_size", 96)
    return CLIPSelfModel(clip_model=clip, **kw)


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = torch.rand(3, 72 + 8 * i, 96, generator=g) * 0.2
        img[:, 10:40, 20:60] = torch.rand(3, 1, 1, generator=g)
        out.append({"image": img})
    return out


def _train_steps(model, steps):
    """AdamW steps on :func:`_images`, two fixed region draws alternating; the summed losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    batch, losses = _images(), []
    for step in range(steps):
        torch.manual_seed(step % 2)
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_few_steps_lower_the_loss_and_teacher_is_frozen():
    model = _model().train()
    assert not model.teacher.training
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    frozen = {k: v.clone() for k, v in model.clip.state_dict().items() if "resblocks" not in k}
    assert all("resblocks" in n for n, p in model.named_parameters() if p.requires_grad)
    losses = _train_steps(model, 8)
    assert losses[-1] < losses[0] and losses[-2] < losses[1]
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    for k, v in model.clip.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k  # embeddings, ln_post, proj, text tower


def test_train_blocks_and_errors():
    model = _model(train_blocks=1)
    trainable = {
        n.split(".resblocks.")[1].split(".")[0]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"3"}  # the last of 4 blocks
    with pytest.raises(ValueError, match="patch size"):
        _model(image_size=100)
    with pytest.raises(TypeError, match="VisionTransformer"):
        CLIPSelfModel(clip_model=build_clip_model("ovdet-tiny-rn"))


def test_student_on_windows_is_the_map_the_windowed_dense_scorer_reads():
    """CLIPSELF.TOWER_WINDOW: the student's map is the dense scorer's with the same
    VLM_SCORER.TOWER_WINDOW (what F-ViT reads at test time), not the whole image's; training
    through the windows lowers the loss; windows off the patch grid are refused by name."""
    from ovdet_plugin.modeling.vlm_scorers import DenseRegionScorer

    model = _model(tower_window=64, tower_window_stride=32).train()
    images = torch.randn(2, 3, 96, 96)
    scorer = DenseRegionScorer(copy.deepcopy(model.clip.visual), window=64, window_stride=32)
    with torch.no_grad():
        read = scorer.dense.project_map(scorer.tower_map(images))
        student = model.student(images, tile=64, tile_stride=32)
        whole = model.student(images)
    torch.testing.assert_close(student, read)
    assert not torch.allclose(student, whole, atol=1e-3)
    losses = _train_steps(model, 6)
    assert losses[-1] < losses[0] and losses[-2] < losses[1]
    for bad in ({"tower_window": 60}, {"tower_window": 64, "tower_window_stride": 12}):
        with pytest.raises(
            ValueError, match="CLIPSELF.TOWER_WINDOW .* multiples of the tower's patch"
        ):
            _model(**bad)


def test_contrastive_term_and_attention_last_block():
    """CONTRASTIVE_WEIGHT adds its weighted InfoNCE as a second loss; VALUE_ONLY_LAST_BLOCK False
    makes the student's map the one the dense scorer reads with LAST_BLOCK "attention" (not
    CLIPSelf's value-only map); training with both lowers the summed loss."""
    from ovdet_plugin.modeling.vlm_scorers import DenseRegionScorer

    model = _model(contrastive_weight=2.0, contrastive_temperature=10.0, value_only_last=False)
    torch.manual_seed(0)
    losses = model(_images())
    assert set(losses) == {"loss_clipself", "loss_clipself_contrastive"}
    assert losses["loss_clipself_contrastive"].item() > 0
    images = torch.randn(2, 3, 96, 96)
    scorer = DenseRegionScorer(copy.deepcopy(model.clip.visual), value_only_last=False)
    with torch.no_grad():
        read = scorer.dense.project_map(scorer.tower_map(images))
        student = model.student(images, value_only_last=False)
        paper = model.student(images)
    torch.testing.assert_close(student, read)
    assert not torch.allclose(student, paper, atol=1e-3)
    totals = _train_steps(model, 8)
    assert totals[-2] < totals[0] and totals[-1] < totals[1]  # the same region draws compared
    assert _model().contrastive_weight == 0.0 and _model().value_only_last  # the paper's
    with pytest.raises(ValueError, match="CONTRASTIVE_TEMPERATURE must be > 0"):
        _model(contrastive_weight=1.0, contrastive_temperature=0.0)


def test_saved_ensemble_equals_formula_and_loads(tmp_path):
    model = _model()
    with torch.no_grad():
        for p in model.clip.visual.parameters():
            p.add_(0.5)  # the student moved away from the teacher
    path = tmp_path / "clipself.pt"
    model.export(str(path), 0.7)
    saved = torch.load(path)
    student, teacher = model.clip.state_dict(), model.teacher.state_dict()
    for k, v in saved.items():
        if k.startswith("visual."):
            want = 0.7 * student[k] + 0.3 * teacher[k[len("visual.") :]]
            torch.testing.assert_close(v, want, rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, student[k])
    loaded = build_clip_model("ovdet-tiny-vit", str(path))  # strict load of the full CLIP
    assert torch.equal(loaded.state_dict()["visual.proj"], saved["visual.proj"])


def test_proposal_variant(tmp_path):
    from PIL import Image

    files = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (200, 100), (i * 90, 50, 50)).save(p)
        files.append(str(p))
    props = {
        "im0.png": [[10, 10, 60, 60], [0, 0, 4, 4], [100, 20, 190, 90]],  # the 4x4 box is too small
        files[1]: [],
    }
    (tmp_path / "props.json").write_text(json.dumps(props))
    ds = CLIPSelfImageDataset(files, 96, load_proposals(str(tmp_path / "props.json")))
    s0 = ds[0]
    assert s0["image"].shape == (3, 48, 96)
    torch.testing.assert_close(
        s0["proposals"], torch.tensor([[4.8, 4.8, 28.8, 28.8], [48.0, 9.6, 91.2, 43.2]])
    )
    assert len(ds[1]["proposals"]) == 0
    model = _model(mode="proposals")
    assert model.teacher_crop_scale == 1.5
    loss = model([s0, ds[1]])["loss_clipself"]
    assert 0 <= loss.item() <= 2
    # a proposals file without an image is a clear error
    with pytest.raises(KeyError, match="no entry for image"):
        CLIPSelfImageDataset(
            files + [str(tmp_path / "other.png")], 96, load_proposals(str(tmp_path / "props.json"))
        )
    with pytest.raises(FileNotFoundError, match="PROPOSALS_FILE"):
        load_proposals(os.path.join(str(tmp_path), "missing.json"))


def test_unreadable_image_is_skipped(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    ds = CLIPSelfImageDataset([str(bad)], 64)
    assert ds[0] is None
    model = _model()
    out = model([])["loss_clipself"]
    assert out.item() == 0.0 and out.requires_grad


def test_annotation_variant_uses_the_datasets_boxes(tmp_path):
    """MODE "annotations": a registered dataset's own boxes (any BoxMode) are the regions; an
    image folder beside it is refused, since its images have no boxes."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode
    from PIL import Image

    from ovdet_plugin import add_ovdet_config
    from ovdet_plugin.engine.pretrain import build_clipself_loader
    from ovdet_plugin.pretraining.clipself import annotation_boxes

    files = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (200, 100), (i * 90, 50, 50)).save(p)
        files.append(str(p))
    dicts = [
        {"file_name": files[0], "image_id": 0, "height": 100, "width": 200, "annotations": [
            {"bbox": [10, 10, 50, 50], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [100, 20, 190, 90], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3},
        ]},
        {"file_name": files[1], "image_id": 1, "height": 100, "width": 200, "annotations": []},
    ]  # fmt: skip
    name = f"clipself_annotations_{os.getpid()}"
    reads = []
    DatasetCatalog.register(name, lambda: reads.append(1) or dicts)
    try:
        boxes = annotation_boxes([name])
        assert boxes[files[0]].tolist() == [[10, 10, 60, 60], [100, 20, 190, 90]]
        assert boxes[files[1]].shape == (0, 4)
        cfg = get_cfg()
        add_ovdet_config(cfg)
        opts = ["DATASETS.TRAIN", f"('{name}',)", "MODEL.OVD.CLIPSELF.MODE", "annotations",
                "MODEL.OVD.CLIPSELF.IMAGE_SIZE", "96", "SOLVER.IMS_PER_BATCH", "2",
                "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
        cfg.merge_from_list(opts)
        reads.clear()
        batch = next(iter(build_clipself_loader(cfg)))
        assert len(reads) == 1  # files and boxes from one read of the dataset
        by_file = {s["file_name"]: s["proposals"] for s in batch}
        torch.testing.assert_close(
            by_file[files[0]], torch.tensor([[4.8, 4.8, 28.8, 28.8], [48.0, 9.6, 91.2, 43.2]])
        )
        model = _model(mode="annotations")
        assert model.teacher_crop_scale == 1.5
        assert 0 <= model(batch)["loss_clipself"].item() <= 2
        cfg.MODEL.OVD.CLIPSELF.IMAGE_FOLDER = str(tmp_path)
        with pytest.raises(ValueError, match="IMAGE_FOLDER"):
            build_clipself_loader(cfg)
    finally:
        DatasetCatalog.remove(name)
    with pytest.raises(ValueError, match="annotations"):
        _model(mode="boxes")
