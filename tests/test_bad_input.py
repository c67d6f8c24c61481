"""Bad input, as a new user would give it: each case fails early with a message that names the
problem and the fix, or is dropped and counted, never trained, evaluated or drawn silently.

Table-driven: every row is (case id, callable that must raise, exception type, words the message
must contain)."""

import errno
import json
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from ovdet_plugin.engine.checks import (
    check_device,
    check_vocabulary_matches_dataset,
    check_writable_dir,
)
from ovdet_plugin.utils.checkpoint import AtomicCheckpointer
from ovdet_plugin.vocabulary import load_vocabulary


def _lvis_json(path, *, images=None, annotations=None, categories=None):
    data = {
        "images": (
            images
            if images is not None
            else [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}]
        ),
        "annotations": (
            annotations
            if annotations is not None
            else [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]
        ),
        "categories": (
            categories
            if categories is not None
            else [
                {"id": 1, "name": "cat", "frequency": "f"},
                {"id": 2, "name": "dog", "frequency": "r"},
            ]
        ),
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def _load(path, **kwargs):
    from ovdet_plugin.data.datasets.lvis_format import load_lvis_format_json

    cv2.imwrite(os.path.join(os.path.dirname(path), "a.png"), np.zeros((20, 30, 3), np.uint8))
    return load_lvis_format_json(path, os.path.dirname(path), **kwargs)


def _truncated(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"images": [{"id": 1, ')
    return str(path)


def _readonly_dir(tmp_path, monkeypatch):
    """A read-only folder. Root ignores permissions, so as root writes under it are refused the
    way the OS refuses them to other users: ``tempfile`` raises ``PermissionError`` there."""
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    if os.access(folder, os.W_OK):  # root

        def refusing(real):
            def wrapped(*args, dir=None, **kwargs):
                if dir is not None and os.path.abspath(dir).startswith(str(folder)):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
                return real(*args, dir=dir, **kwargs)

            return wrapped

        monkeypatch.setattr(tempfile, "TemporaryFile", refusing(tempfile.TemporaryFile))
        monkeypatch.setattr(tempfile, "mkstemp", refusing(tempfile.mkstemp))
    return str(folder)


def _under_a_file(tmp_path):
    """A folder path below a regular file: not creatable, even by root."""
    (tmp_path / "plain_file").write_text("x")
    return str(tmp_path / "plain_file" / "sub")


RAISING = [
    ("dataset: duplicate image id", lambda t: _load(_lvis_json(
        t / "d.json", images=[{"id": 1, "file_name": "a.png", "height": 20, "width": 30}] * 2)),
     ValueError, ["image id", "unique"]),
    ("dataset: duplicate category id", lambda t: _load(_lvis_json(
        t / "d.json", categories=[{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}])),
     ValueError, ["category id", "unique"]),
    ("dataset: truncated JSON names the file", lambda t: _load(_truncated(t)),
     ValueError, ["t.json", "truncated"]),
    ("dataset: base_only removes every annotation", lambda t: _load(_lvis_json(
        t / "d.json", annotations=[{"id": 1, "image_id": 1, "category_id": 2,
                                    "bbox": [1, 1, 5, 5]}]), base_only=True),
     ValueError, ["base_only removed every annotation", "base_only=False"]),
    ("dataset: every image missing on disk", lambda t: __import__(
        "ovdet_plugin.data.datasets.lvis_format", fromlist=["x"]).load_lvis_format_json(
        _lvis_json(t / "d.json"), str(t / "nowhere")),
     FileNotFoundError, ["image_root", "on disk"]),
    ("vocabulary: lvis_v1 as a one-class vocabulary", lambda t: load_vocabulary("lvis_v1"),
     ValueError, ["'lvis'", ".txt file"]),
    ("vocabulary: fewer classes than the dataset", lambda t: check_vocabulary_matches_dataset(
        "cat, dog", "bad_input_synthetic_train", "MODEL.OVD.TRAIN_VOCABULARY"),
     ValueError, ["has 2 classes", "dataset:bad_input_synthetic_train"]),
    ("vocabulary: same size, other names", lambda t: check_vocabulary_matches_dataset(
        ", ".join(f"c{i}" for i in range(32)), "bad_input_synthetic_train",
        "MODEL.OVD.TRAIN_VOCABULARY"),
     ValueError, ["differently", "dataset:bad_input_synthetic_train"]),
    ("device: cuda without a GPU", lambda t: check_device("cuda")
     if not torch.cuda.is_available() else check_device("cuda:99"),
     ValueError, ["MODEL.DEVICE"]),
    ("output: a file given as folder", lambda t: check_writable_dir(
        str((t / "f").write_text("x") and t / "f"), "OUTPUT_DIR"),
     NotADirectoryError, ["OUTPUT_DIR", "folder"]),
    ("checkpoint: truncated .pth", lambda t: AtomicCheckpointer(torch.nn.Linear(2, 2)).load(
        str((t / "m.pth").write_bytes(b"PK\x03\x04 truncated") and t / "m.pth")),
     RuntimeError, ["m.pth", "truncated", "MODEL.WEIGHTS"]),
    ("checkpoint: missing file", lambda t: AtomicCheckpointer(torch.nn.Linear(2, 2)).load(
        str(t / "none.pth")),
     FileNotFoundError, ["none.pth", "MODEL.WEIGHTS"]),
    ("checkpoint: weights of another model", lambda t: _foreign_weights(t),
     ValueError, ["does not fit the model", "--config-file"]),
    ("captions: JSONL line that is not JSON", lambda t: _captions(t, "c.jsonl",
     '{"path": "a.jpg", "caption": "a cat"}\n{"path": "b.jpg", \n'),
     ValueError, ["c.jsonl, line 2", "fix or remove"]),
    ("captions: CSV with another delimiter", lambda t: _captions(t, "c.csv",
     "path;caption\na.jpg;a cat;x\n"),
     ValueError, ["c.csv", "commas"]),
    ("captions: only blank captions", lambda t: _captions(t, "c.jsonl",
     '{"path": "a.jpg", "caption": "   "}\n'),
     ValueError, ["no entries"]),
    ("clipself: ensemble alpha outside [0, 1]", lambda t: __import__(
        "ovdet_plugin.pretraining.clipself", fromlist=["x"]).check_ensemble_alpha(1.5),
     ValueError, ["ALPHA_ENSEMBLE", "[0, 1]"]),
]  # fmt: skip


def _foreign_weights(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"something.else": torch.zeros(3)}}, path)
    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2))
    ckpt.load(str(path))
    ckpt.require_complete_load(str(path))


def _captions(tmp_path, name, text):
    from ovdet_plugin.pretraining.caption_data import load_caption_list

    (tmp_path / name).write_text(text)
    return load_caption_list(str(tmp_path / name))


@pytest.fixture(scope="module", autouse=True)
def _synthetic_registered(tmp_path_factory):
    """bad_input_synthetic_train: a tiny generated dataset (32 classes) registered for the rows."""
    from ovdet_plugin.data.datasets.synthetic import register_synthetic_dataset
    from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("d2")
    generate_synthetic_dataset(
        root / "ovdet_synthetic", num_train=4, num_val=2, num_pretrain=0, image_size=64,
        progress=False,
    )  # fmt: skip
    register_synthetic_dataset(str(root / "ovdet_synthetic"), prefix="bad_input_synthetic")


@pytest.mark.parametrize("case,fn,error,words", RAISING, ids=[r[0] for r in RAISING])
def test_bad_input_is_refused_with_the_fix(tmp_path, case, fn, error, words):
    with pytest.raises(error) as info:
        fn(tmp_path)
    for word in words:
        assert word in str(info.value), (case, str(info.value))


@pytest.mark.parametrize("how", ["read-only", "under a file"])
def test_unwritable_output_dir_is_refused(tmp_path, monkeypatch, how):
    if how == "read-only":
        path = os.path.join(_readonly_dir(tmp_path, monkeypatch), "sub")
    else:
        path = _under_a_file(tmp_path)
    with pytest.raises(PermissionError, match="OUTPUT_DIR .* not writable") as info:
        check_writable_dir(path, "OUTPUT_DIR")
    assert path in str(info.value) and "set OUTPUT_DIR" in str(info.value)


@pytest.mark.parametrize("how", ["read-only", "under a file"])
def test_unwritable_text_cache_warns_once_and_encodes_uncached(
    tiny_clip, tmp_path, monkeypatch, caplog, how
):
    from ovdet_plugin.clip import text_embeddings as te

    model, tokenizer = tiny_clip
    folder = _readonly_dir(tmp_path, monkeypatch) if how == "read-only" else _under_a_file(tmp_path)
    kwargs = dict(prompts="single", cache_dir=folder)
    with caplog.at_level("WARNING"):
        emb = te.get_text_embeddings(model, tokenizer, "cat, dog", **kwargs)
        again = te.get_text_embeddings(model, tokenizer, "cat, dog", **kwargs)
    torch.testing.assert_close(emb, again)
    assert emb.shape[0] == 2
    warnings = [r.getMessage() for r in caplog.records if "is not writable" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # once per folder
    assert folder in warnings[0] and "MODEL.OVD.TEXT.CACHE_DIR" in warnings[0]
    assert not os.path.isdir(folder) or not os.listdir(folder)  # nothing written there


def test_dropped_annotations_are_counted_by_reason(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},  # kept
        {"id": 2, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]},  # unknown image
        {"id": 3, "image_id": 1, "category_id": 1},  # no bbox
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},  # zero width
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, -2, 5]},  # negative
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 2, 5]},  # NaN
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 1, 2, 5]},  # outside 30 px
    ]
    with caplog.at_level("WARNING"):
        dicts = _load(_lvis_json(tmp_path / "d.json", annotations=anns))
    assert [len(d["annotations"]) for d in dicts] == [1]
    log = caplog.text
    assert "dropped 6 annotation(s)" in log
    for reason in ["1 pointing to an unknown image_id", "1 without bbox",
                   "2 with a bbox zero or negative size", "1 with a bbox NaN or infinite",
                   "1 with a bbox outside the image"]:  # fmt: skip
        assert reason in log, log


def test_keep_last_n_checkpoints_and_stale_temporaries(tmp_path):
    (tmp_path / ".tmp-model_0000009.pth-abc").write_bytes(b"half")
    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path), max_to_keep=2)
    assert not list(tmp_path.glob(".tmp-*"))  # removed on start
    for it in range(5):
        ckpt.save(f"model_{it:07d}")
    ckpt.save("model_final")
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint", "model_0000003.pth", "model_0000004.pth", "model_final.pth"
    ]  # fmt: skip


def test_add_ovdet_config_twice_keeps_values():
    from detectron2.config import get_cfg

    from ovdet_plugin import add_ovdet_config

    cfg = add_ovdet_config(get_cfg())
    cfg.MODEL.OVD.TRAIN_VOCABULARY = "cat, dog"
    cfg.MODEL.OVD.CLIP.MODEL_NAME = "ovdet-tiny-vit"
    add_ovdet_config(cfg)
    assert cfg.MODEL.OVD.TRAIN_VOCABULARY == "cat, dog"
    assert cfg.MODEL.OVD.CLIP.MODEL_NAME == "ovdet-tiny-vit"
    assert cfg.MODEL.OVD.CHECKPOINT.MAX_TO_KEEP == 3


def _demo(tmp_path, *args):
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml"),
        *args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_demo_without_weights_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8))
    result = _demo(tmp_path, "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o"))
    assert result.returncode != 0
    assert "MODEL.WEIGHTS is not set" in result.stderr and "model_final.pth" in result.stderr


def test_demo_same_names_corrupt_image_16bit_and_overrides_after_input(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "img.png"), np.full((40, 50, 3), 90, np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    deep = np.full((40, 50), 40000, np.uint16)  # 16-bit grey: 40000 / 257 = 156, not 255
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out = tmp_path / "out"
    result = _demo(
        tmp_path, "--random-weights", "--output", str(out), "--confidence-threshold", "1.1",
        "--input", str(tmp_path / "x" / "img.png"), str(tmp_path / "y" / "img.png"),
        str(tmp_path / "bad.png"), str(tmp_path / "deep.png"),
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]  # the corrupt image is reported
    assert "bad.png: cannot read the image" in log and "1 of 4 image(s) failed" in log
    assert sorted(os.listdir(out)) == ["deep.png", "img.png", "img_2.png"]
    drawn = cv2.imread(str(out / "deep.png"))
    assert int(drawn[20, 25, 0]) == 156  # scaled to 8 bits, not saturated at 255


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the check")


@pytest.mark.parametrize(
    "opts,words",
    [
        (["MODEL.OVD.TRAIN_VOCABULARY", "cat, dog"], ["MODEL.OVD.TRAIN_VOCABULARY", "has 2"]),
        (
            ["DATASETS.TEST", '("bad_input_synthetic_val",)', "MODEL.OVD.TEST_VOCABULARY", "a, b"],
            ["MODEL.OVD.TEST_VOCABULARY", "has 2"],
        ),
    ],
    ids=["train vocabulary", "test vocabulary (evaluated after training)"],
)
def test_vocabulary_mismatch_fails_before_the_model_is_built(tmp_path, monkeypatch, opts, words):
    import detectron2.engine.defaults as d2_defaults
    from conftest import load_test_config

    from ovdet_plugin.engine import OVDTrainer

    monkeypatch.setattr(d2_defaults, "build_model", _no_model)  # what DefaultTrainer calls
    base = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", "()"]
    base += ["DATASETS.TRAIN", '("bad_input_synthetic_train",)']
    base += ["MODEL.OVD.TRAIN_VOCABULARY", "dataset:bad_input_synthetic_train"]
    with pytest.raises(AssertionError, match="model was built"):  # matching: reaches the build
        OVDTrainer(load_test_config("tiny_fvlm", *base))
    with pytest.raises(ValueError, match="dataset:bad_input_synthetic") as info:
        OVDTrainer(load_test_config("tiny_fvlm", *base, *opts))
    for word in words:
        assert word in str(info.value)


def test_eval_only_vocabulary_mismatch_fails_before_the_model_is_built(tmp_path, monkeypatch):
    import importlib.util

    from ovdet_plugin.engine import OVDTrainer

    spec = importlib.util.spec_from_file_location(
        "train_net_tool", os.path.join(REPO_ROOT, "tools", "train_net.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(OVDTrainer, "build_model", classmethod(_no_model))
    args = tool.add_dataset_arguments(tool.default_argument_parser()).parse_args(
        [
            "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml"),
            "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "m.pth"), "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", '("bad_input_synthetic_val",)',
            "MODEL.OVD.TEST_VOCABULARY", "cat, dog",
        ]
    )  # fmt: skip
    with pytest.raises(ValueError, match="MODEL.OVD.TEST_VOCABULARY 'cat, dog' has 2 classes"):
        tool.main(args)


def test_plain_get_cfg_without_ovdet_keys_names_add_ovdet_config(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ovdet_plugin.engine import OVDTrainer

    yaml_path = os.path.join(REPO_ROOT, "configs", "test", "tiny_rcnn.yaml")
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.OVD"):
        get_cfg().merge_from_file(yaml_path)  # Detectron2's own error: the README names the fix
    plain = get_cfg()
    plain.MODEL.META_ARCHITECTURE = "OVDetGeneralizedRCNN"
    plain.MODEL.DEVICE, plain.OUTPUT_DIR = "cpu", str(tmp_path / "out")
    for build in (OVDTrainer, build_model):  # the plugin's entry points that take a cfg
        with pytest.raises(KeyError, match=r"no MODEL.OVD.*add_ovdet_config\(cfg\)"):
            build(plain)


def test_image_gone_in_the_middle_of_training_is_skipped_then_refused(tmp_path, caplog):
    from detectron2.data import transforms as T

    from ovdet_plugin.data.dataset_mapper import OVDDatasetMapper, UnreadableImageError

    def image(name):
        cv2.imwrite(str(tmp_path / name), np.zeros((20, 30, 3), np.uint8))
        return {"file_name": str(tmp_path / name), "height": 20, "width": 30, "image_id": name,
                "annotations": []}  # fmt: skip

    kwargs = dict(augmentations=[T.NoOpTransform()], image_format="BGR")
    kwargs.update(dataset_names=("my_train",), max_unreadable_images=1)
    train, test = OVDDatasetMapper(True, **kwargs), OVDDatasetMapper(False, **kwargs)
    good, gone, corrupt = image("good.png"), image("gone.png"), image("corrupt.png")
    os.remove(gone["file_name"])  # deleted after the dataset was loaded
    (tmp_path / "corrupt.png").write_bytes(b"not a png any more")
    assert train(dict(good))["image"].shape == (3, 20, 30)
    with caplog.at_level("WARNING"):
        assert train(dict(gone)) is None  # skipped: Detectron2's loader takes another image
    for word in ["gone.png", "'my_train'", "1 of at most 1"]:
        assert word in caplog.text, caplog.text
    with pytest.raises(UnreadableImageError) as info:  # over the cap: stops, file named
        train(dict(corrupt))
    for word in ["corrupt.png", "'my_train'", "MAX_UNREADABLE_IMAGES (1)", "restore the file"]:
        assert word in str(info.value), str(info.value)
    with pytest.raises(UnreadableImageError, match="gone.png.*restore the file"):
        test(dict(gone))  # never skipped at test time: the metrics would change
    from detectron2.data import build_detection_train_loader

    lenient = OVDDatasetMapper(True, **{**kwargs, "max_unreadable_images": 100})
    loader = build_detection_train_loader(
        [good, gone], mapper=lenient, total_batch_size=2, num_workers=0,
        aspect_ratio_grouping=False,
    )  # fmt: skip
    batch = next(iter(loader))  # the loader goes on with the readable image
    assert [d["image_id"] for d in batch] == ["good.png", "good.png"]


def test_ovdtrainer_test_loader_names_an_unreadable_image_and_its_dataset(tmp_path):
    from conftest import load_test_config
    from detectron2.data import DatasetCatalog

    from ovdet_plugin.data.dataset_mapper import UnreadableImageError
    from ovdet_plugin.engine import OVDTrainer

    gone = {"file_name": str(tmp_path / "gone.png"), "height": 20, "width": 30, "image_id": 1}
    DatasetCatalog.register("bad_input_gone_test", lambda: [gone])
    cfg = load_test_config("tiny_fvlm", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0")
    with pytest.raises(UnreadableImageError, match="gone.png.*'bad_input_gone_test'"):
        next(iter(OVDTrainer.build_test_loader(cfg, "bad_input_gone_test")))


def _vild_folder(folder, dataset_name, files, record=True):
    """ViLD embeddings for image ids 1.. with these file names, as the precompute tool writes."""
    from ovdet_plugin.data.vild_embeddings import ViLDEmbeddingWriter, dataset_record

    dicts = [{"image_id": i + 1, "file_name": f"/data/{f}"} for i, f in enumerate(files)]
    dataset = dataset_record(dataset_name, dicts) if record else None
    writer = ViLDEmbeddingWriter(str(folder), embed_dim=4, dataset=dataset)
    for d in dicts:
        box, emb = torch.tensor([[0.0, 0, 5, 5]]), torch.eye(4)[:1]
        writer.add(d["image_id"], box, emb, file_name=d["file_name"] if record else None)
    writer.flush()
    return str(folder)


def test_vild_embeddings_of_another_dataset_are_refused(tmp_path, caplog):
    from ovdet_plugin.data.vild_embeddings import ViLDEmbeddingStore, ViLDEmbeddingWriter

    folder = _vild_folder(tmp_path / "emb", "coco_train", ["a.jpg", "b.jpg"])
    store = ViLDEmbeddingStore(folder)
    assert store.dataset["name"] == "coco_train" and store.dataset["num_images"] == 2
    same = [{"image_id": 1, "file_name": "/else/a.jpg"}, {"image_id": 2, "file_name": "b.jpg"}]
    store.check_dataset(same, ["coco_train_ov"])  # the same images (another root): accepted
    other = [{"image_id": 1, "file_name": "/x/a.jpg"}, {"image_id": 2, "file_name": "/x/z.jpg"}]
    with pytest.raises(ValueError) as info:
        store.check_dataset(other, ["my_train"])
    for word in ["'coco_train' (2 images)", "'my_train'", "1 of its 2 image ids", "'b.jpg' there",
                 "'z.jpg' here", "precompute_vild_embeddings.py", "EMBEDDINGS_DIR"]:  # fmt: skip
        assert word in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="image_id 2 is 'b.jpg', not 'z.jpg'"):
        store.get(2, "/x/z.jpg")  # the mapper's per-image check
    with pytest.raises(ValueError, match="1 of the 3 images .* 'my_train' have none"):
        store.check_dataset(same + [{"image_id": 3, "file_name": "c.jpg"}], ["my_train"])
    with pytest.raises(ValueError, match="holds embeddings of dataset 'coco_train'.*my_train"):
        ViLDEmbeddingWriter(folder, embed_dim=4, dataset=dict(store.dataset, name="my_train"))
    old = _vild_folder(tmp_path / "old", "", ["a.jpg"], record=False)  # an older tool's folder
    with caplog.at_level("WARNING"):
        ViLDEmbeddingStore(old).check_dataset(other, ["my_train"])
    assert (
        "do not record the dataset" in caplog.text and "precompute_vild_embeddings" in caplog.text
    )


def test_trainer_refuses_vild_embeddings_of_another_dataset_before_training(tmp_path):
    from conftest import load_test_config
    from detectron2.data import DatasetCatalog

    from ovdet_plugin.engine import OVDTrainer

    n = len(DatasetCatalog.get("bad_input_synthetic_train"))
    folder = _vild_folder(tmp_path / "emb", "lvis_v1_train", [f"x{i}.jpg" for i in range(n)])
    cfg = load_test_config(
        "tiny_fvlm", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", '("bad_input_synthetic_train",)',
        "MODEL.OVD.TRAIN_VOCABULARY", "dataset:bad_input_synthetic_train",
        "MODEL.OVD.VILD.EMBEDDINGS_DIR", folder, "DATALOADER.NUM_WORKERS", "0",
    )  # fmt: skip
    with pytest.raises(ValueError, match="'lvis_v1_train'.*'bad_input_synthetic_train'"):
        OVDTrainer.build_train_loader(cfg)
