"""The end-to-end benchmark on the generated dataset (``tools/run_synthetic_benchmark.py``,
``make demo``, ``make benchmark-synthetic``).

Steps, each in its own folder under the output directory:

1. ``data``: :func:`~ovdet_plugin.data.synthetic.generate_synthetic_dataset` (the detection
   splits), registered as ``ovdet_synthetic_*`` through ``DETECTRON2_DATASETS=<out>/datasets``.
2. ``clip`` and ``clip_rn``: the tiny CLIPs (:data:`TINY_CLIPS`; the ViT for F-ViT and RO-ViT,
   the ResNet for F-VLM and ViLD), each run only when a method uses it. Each is either the
   checkpoint the project ships (its commands and seed in its ``.json`` record;
   ``benchmarks/ship_tiny_clip.py`` ships a from-scratch run of this step) or, with
   ``from_scratch``, pretrained here with the product's tools:
   ``tools/generate_synthetic_data.py --pretrain-style scene_crops`` writes a caption folder
   (``<out>/datasets/ovdet_synthetic_captions``, another seed than the benchmark's data: its val
   split is the one a recipe is chosen on), then
   ``tools/pretrain_rovit.py --config-file configs/pretraining/tiny_synthetic{,_rn}.yaml`` trains
   on it (zero-shot crop curve on that caption val split in its metrics.json). Their zero-shot
   crop accuracy on the benchmark's val objects is the benchmark's first figure.
3. ``clipself``: CLIPSelf adaptation of the tiny CLIP (``tools/train_clipself.py``).
4. one step per detector, trained on the base classes with ``tools/train_net.py`` and a config of
   ``configs/synthetic/``, evaluated by the stock ``LVISEvaluator`` (AP, APr, APc, APf); a fused
   method is evaluated a second time with ``MODEL.OVD.FUSION.RULE ""`` (detector only, boxes
   only: ``MODEL.MASK_ON False``), and the score it fuses gets its region zero-shot accuracy
   (:func:`~ovdet_plugin.evaluation.region_zero_shot.method_region_zero_shot`: the val boxes
   scored inside their whole images by the method's scorer, as at test time; where the config
   crops elsewhere than the paper, also ``region_zero_shot_map``: the same scorer on its map of
   the whole image, the paper's region feature, which RO-ViT's CPE claim is checked on). ViLD's
   distillation targets are precomputed first (``tools/precompute_vild_embeddings.py``, with the
   proposals of the F-VLM detector's RPN, trained on base classes).
   The oracle row (``fvlm_oracle``) is the F-VLM detector trained on every class's boxes
   (``ovdet_synthetic_train_all``, rare names in its training softmax) and evaluated detector
   only: the ceiling APr for the open-vocabulary rows.
5. ``pictures``: ``tools/demo.py`` (Detectron2's ``Visualizer``) on the first few val images
   holding a rare object, with a typed vocabulary, for the open-vocabulary method with the best
   APr; when it names no rare object right in them, the first val image where it does is added
   and marked as selected (:meth:`SyntheticBenchmark._pictures_step`). The pictures' own label
   precision is scored from what is drawn (``--save-detections``).
6. ``results.json`` / ``results.md``, with each method's label precision of drawn detections
   (:func:`ovdet_plugin.evaluation.label_precision`): over the whole val split, of the evaluator's
   saved detections that the pictures' selection would draw (score >= ``PICTURE_THRESHOLD``, the
   ``PICTURE_TOP_K`` highest per image), the share named as a ground-truth object of the same
   class with IoU >= 0.5; overall and for rare-class labels. Computed from the step folders on
   every run (cheap), so reused steps get it too.

A step is skipped when its folder holds a ``step.json`` whose key (the step's settings, the
configs' contents and the digests of its inputs) equals the current one; its outputs are then
reused. Everything is written atomically or into the step folder before ``step.json``, so a
killed run resumes at the step it was in.
"""

import contextlib
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

from ovdet_plugin.utils.atomic_io import atomic_write_path
from ovdet_plugin.utils.hashing import file_sha256

__all__ = [
    "ALL_METHODS",
    "BenchmarkSize",
    "METHODS",
    "SIZES",
    "SHIPPED_CLIP",
    "SHIPPED_CLIP_RN",
    "TINY_CLIPS",
    "SyntheticBenchmark",
    "file_sha256",
    "load_step",
    "read_zero_shot_curve",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs", "synthetic")
BASE_CONFIG = "Base-Synthetic.yaml"  # every detector config's base: its length is the reference
# The tiny CLIPs' pretraining recipes (tools/pretrain_rovit.py), used by ``from_scratch``: the
# ViT (F-ViT, RO-ViT) and the ResNet (F-VLM, ViLD).
PRETRAIN_CONFIG = os.path.join(REPO_ROOT, "configs", "pretraining", "tiny_synthetic.yaml")
PRETRAIN_CONFIG_RN = os.path.join(REPO_ROOT, "configs", "pretraining", "tiny_synthetic_rn.yaml")
# The caption folder's val split, registered for the pretraining tool's zero-shot eval hook (the
# config's DATASETS.TEST).
CAPTIONS_VAL = "ovdet_synthetic_captions_val"
# The caption folder's generator seed is the benchmark data's seed plus this.
CAPTIONS_SEED_OFFSET = 1
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")
# The tiny CLIPs this project pretrained on the generated data (see their .json records).
SHIPPED_CLIP = os.path.join(REPO_ROOT, "benchmarks", "checkpoints", "tiny_clip_synthetic.pt")
SHIPPED_CLIP_RN = os.path.join(REPO_ROOT, "benchmarks", "checkpoints", "tiny_clip_rn_synthetic.pt")
CLIP_MODEL_NAME = "ovdet-tiny-vit-avg"
CLIP_RN_MODEL_NAME = "ovdet-tiny-rn64"


@dataclass(frozen=True)
class TinyClip:
    """One of the benchmark's tiny CLIPs: its step folder, open_clip model name, pretraining
    config (``from_scratch``) and shipped checkpoint."""

    step: str
    model_name: str
    pretrain_config: str
    shipped: str


# Each method uses the tower its paper uses: a CLIP ViT for F-ViT and RO-ViT (CLIPSelf and the
# cropped positional embedding are ViT methods), a CLIP ResNet for F-VLM (its frozen backbone and
# attention-pool region score) and ViLD (teacher and backbone).
TINY_CLIPS = {
    "vit": TinyClip("clip", CLIP_MODEL_NAME, PRETRAIN_CONFIG, SHIPPED_CLIP),
    "rn": TinyClip("clip_rn", CLIP_RN_MODEL_NAME, PRETRAIN_CONFIG_RN, SHIPPED_CLIP_RN),
}
# The pictures' drawing selection (tools/demo.py --confidence-threshold, --top-k), also the
# selection of the label-precision figure. 0.8 is the lowest of 0.05, 0.5, 0.7, 0.8 at which the
# pictured method (ViLD) named >= 80% of its drawn detections right on another generated split
# (seed 1: 82%, 157 drawn, rare labels 38%; 0.05 gave 27%, and can give at most about 50% with
# 6 drawn per image and 3 objects per image); benchmarks/label_precision_thresholds.py.
PICTURE_THRESHOLD = 0.8
PICTURE_TOP_K = 6
VAL_DATASET = "ovdet_synthetic_val"

# Pretraining recipes: config overrides of tools/pretrain_rovit.py on top of PRETRAIN_CONFIG
# (global average pooling, the tiny model's "avg" pool; one short caption per object).
# "multipos" is the config as it is (multi-positive softmax loss, no cropped positional
# embedding); "cpe_multipos" and "cpe_focal" add RO-ViT's cropped positional embedding and then
# its focal loss (ablation rows).
_CPE = ["MODEL.OVD.ROVIT.CPE", "True", "MODEL.OVD.ROVIT.UP_POS_EMB_SIZE", "16"]
PRETRAIN_VARIANTS = {
    "multipos": [],
    "cpe_multipos": list(_CPE),
    # Focal loss (alpha 0.5, gamma 1) with a SigLIP-style learnable bias (-10, scale 10):
    # open_clip's CLIP has none, and without one the loss did not train (ZERO_SHOT_NOTES.md).
    "cpe_focal": _CPE + [
        "MODEL.OVD.ROVIT.LOSS", "focal",
        "MODEL.OVD.ROVIT.LOGIT_BIAS_INIT", "-10.0",
        "MODEL.OVD.ROVIT.LOGIT_SCALE_INIT", "10.0",
    ],
}  # fmt: skip
DEFAULT_PRETRAIN_VARIANT = "multipos"


@dataclass(frozen=True)
class BenchmarkSize:
    """Every size of a run. ``default`` takes 11.5-22 minutes on 2-core CPUs (with the
    shipped tiny CLIPs); ``smoke`` is the test suite's run."""

    num_train: int = 1000
    num_val: int = 200
    # Caption images of the detection folder: none (the tiny CLIP's captions have their own
    # folder, ``pretrain_pool`` images; nothing reads these).
    num_pretrain: int = 0
    # ``from_scratch``: caption images (scene crops) of the caption folder, and the pretraining
    # run of tools/pretrain_rovit.py (SOLVER.MAX_ITER, IMS_PER_BATCH, BASE_LR).
    pretrain_pool: int = 100000
    pretrain_steps: int = 16000  # the ViT (configs/pretraining/tiny_synthetic.yaml)
    pretrain_steps_rn: int = 4000  # the ResNet (configs/pretraining/tiny_synthetic_rn.yaml)
    pretrain_batch: int = 128
    pretrain_lr: float = 2e-3
    clipself_iters: int = 1000
    clipself_batch: int = 16
    # Iterations of a detector whose config trains Base-Synthetic.yaml's length (its
    # SOLVER.MAX_ITER); a config that sets its own SOLVER.MAX_ITER is scaled by the same factor
    # (fvlm.yaml: 1000 at 160 px, the time of 1200 at 128 px).
    detector_iters: int = 1200
    detector_batch: int = 4
    vild_proposals: int = 50
    num_pictures: int = 4

    def data_overrides(self, seed: int) -> Dict:
        return {
            "seed": seed,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_pretrain": self.num_pretrain,
        }

    def caption_overrides(self, data_seed: int) -> Dict:
        """The caption folder's generator settings (``from_scratch``): scene crops, another seed
        than the benchmark's data (``data_seed + CAPTIONS_SEED_OFFSET``)."""
        return {
            "seed": data_seed + CAPTIONS_SEED_OFFSET,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_pretrain": self.pretrain_pool,
            "pretrain_style": "scene_crops",
        }


SIZES = {
    "default": BenchmarkSize(),
    "smoke": BenchmarkSize(
        num_train=16,
        num_val=4,
        pretrain_pool=64,
        pretrain_steps=6,
        pretrain_steps_rn=6,
        pretrain_batch=16,
        clipself_iters=2,
        clipself_batch=2,
        detector_iters=3,
        detector_batch=2,
        vild_proposals=8,
        num_pictures=1,
    ),
}


@dataclass(frozen=True)
class Method:
    """A detector of the benchmark: its config, whether it fuses a VLM score (then it is also
    evaluated detector-only), what it needs, and extra config overrides."""

    key: str
    title: str
    config: str
    fused: bool
    backbone: str = "clip"  # "clip": the pretrained tiny CLIP; "clipself": step 3's export
    clip: str = "vit"  # which tiny CLIP (a key of TINY_CLIPS)
    vild: bool = False
    opts: List[str] = field(default_factory=list)
    # trained with the rare classes' boxes: a reference row, never the pictures' method
    oracle: bool = False


# vild.yaml without its second branch and ensemble (one-branch ViLD: text, image, text + image)
NO_ENSEMBLE = ["MODEL.OVD.VLM_SCORER.NAME", "", "MODEL.OVD.FUSION.RULE", ""]

METHODS = {
    "fvlm": Method("fvlm", "F-VLM", "fvlm.yaml", fused=True, clip="rn"),
    "vild": Method("vild", "ViLD (ensemble)", "vild.yaml", fused=False, vild=True, clip="rn"),
    "fvit": Method(
        "fvit", "F-ViT + CLIPSelf", "fvit_clipself.yaml", fused=True, backbone="clipself"
    ),
    "rovit": Method("rovit", "RO-ViT", "rovit.yaml", fused=True),
    # The ceiling APr of the rows above: F-VLM's detector trained on every class's boxes (rare
    # names unmasked in its training softmax), evaluated detector only; one detector training.
    "fvlm_oracle": Method(
        "fvlm_oracle",
        "F-VLM oracle (all classes' boxes)",
        "fvlm.yaml",
        fused=False,
        clip="rn",
        oracle=True,
        opts=[
            "DATASETS.TRAIN", '("ovdet_synthetic_train_all",)',
            "MODEL.OVD.TRAIN_VOCABULARY", "dataset:ovdet_synthetic_train_all",
            "MODEL.OVD.CLASSIFIER.NOVEL_MASK", "none",
            "MODEL.OVD.FUSION.RULE", "",
        ],
    ),  # fmt: skip
}
# Ablation rows of ``make benchmark-synthetic`` (methods §1-4: the directions the papers claim).
ABLATIONS = {
    "vild_text": Method(
        "vild_text",
        "ViLD-text",
        "vild.yaml",
        fused=False,
        clip="rn",
        opts=NO_ENSEMBLE,
    ),
    "vild_image": Method(
        "vild_image",
        "ViLD-image",
        "vild.yaml",
        fused=False,
        clip="rn",
        vild=True,
        opts=NO_ENSEMBLE + ["MODEL.OVD.VILD.TEXT_WEIGHT", "0.0"],
    ),
    "vild_text_image": Method(
        "vild_text_image",
        "ViLD (text + image, one branch)",
        "vild.yaml",
        fused=False,
        clip="rn",
        vild=True,
        opts=NO_ENSEMBLE,
    ),
    "fvit_no_clipself": Method(
        "fvit_no_clipself", "F-ViT without CLIPSelf", "fvit_clipself.yaml", True
    ),
    "rovit_frozen": Method(
        "rovit_frozen",
        "RO-ViT, frozen backbone",
        "rovit.yaml",
        fused=True,
        opts=["MODEL.OVD.BACKBONE.FREEZE", "True", "MODEL.OVD.VLM_SCORER.FROZEN_COPY", "False"],
    ),
}
# Every method the benchmark can run, by key: the headline rows and the ablation rows.
ALL_METHODS = {**METHODS, **ABLATIONS}


def _config_digest(name: str) -> str:
    """Digest of a config (a file of configs/synthetic, or a path) and every file it inherits from
    (_BASE_)."""
    h = hashlib.sha256()
    path = os.path.join(CONFIG_DIR, name)  # an absolute ``name`` stays as it is
    while path:
        with open(path, "rb") as f:
            text = f.read()
        h.update(text)
        base = next(
            (ln.split(":", 1)[1].strip().strip("\"'") for ln in text.decode().splitlines()
             if ln.startswith("_BASE_:")),
            None,
        )  # fmt: skip
        path = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else ""
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _config_max_iter(config: str) -> int:
    """SOLVER.MAX_ITER of a file of configs/synthetic (its _BASE_ chain applied)."""
    from ovdet_plugin.config import get_ovdet_cfg

    return get_ovdet_cfg(os.path.join(CONFIG_DIR, config)).SOLVER.MAX_ITER


def detector_iters(config: str, size: BenchmarkSize) -> int:
    """Training iterations of a method's detector at ``size``: ``size.detector_iters`` scaled by
    the config's own length (its SOLVER.MAX_ITER over BASE_CONFIG's), at least 1."""
    ratio = _config_max_iter(config) / _config_max_iter(BASE_CONFIG)
    return max(1, round(size.detector_iters * ratio))


def _write_json(path: str, obj) -> None:
    with atomic_write_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def load_step(folder: str) -> Optional[Dict]:
    """A step folder's ``step.json`` (``{"key", "record", "seconds"}``), None if absent."""
    path = os.path.join(folder, "step.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # a corrupt stamp: the step runs again


def _ap(results: Dict, task: str = "bbox") -> Optional[Dict[str, float]]:
    """AP, AP50, APr, APc, APf (percent) of ``task`` ("bbox" or "segm") from Detectron2's results
    dict (one test dataset); None when the evaluator did not report the task (mask head off)."""
    if "bbox" not in results and len(results) == 1:
        results = next(iter(results.values()))
    if task not in results:
        return None
    return {k: float(results[task][k]) for k in ("AP", "AP50", "APr", "APc", "APf")}


def _bbox(results: Dict) -> Dict[str, float]:
    """Box AP, APr, APc, APf (percent) from Detectron2's results dict (one test dataset)."""
    return _ap(results, "bbox")


class SyntheticBenchmark:
    """Runs the steps (see the module docstring) into ``out_dir``.

    Args:
        out_dir: output folder (the run's steps, results.json, results.md, pictures/).
        size: a :class:`BenchmarkSize` (``SIZES[name]``).
        seed: data, pretraining and detector seed.
        from_scratch: pretrain the tiny CLIP here instead of using the shipped checkpoint.
        pretrain_variant: a key of :data:`PRETRAIN_VARIANTS` (config overrides of
            tools/pretrain_rovit.py, with ``from_scratch``).
        data_seed: the generator's seed (default: ``seed``).
        clip_checkpoint: use this tiny CLIP ViT checkpoint instead (an open_clip state dict of
            ``ovdet-tiny-vit-avg``); overrides ``from_scratch`` for the ViT.
        clip_rn_checkpoint: the same for the tiny CLIP ResNet (``ovdet-tiny-rn64``).
        methods: keys of :data:`METHODS` (and :data:`ABLATIONS`) to train.
        threads: torch threads of every process (0: one).
        jobs: steps run at once, the tiny CLIPs then the detectors (2 suits a 2-core CPU: each
            run is mostly Python).
        log: where progress lines go.
    """

    def __init__(
        self,
        out_dir: str,
        size: BenchmarkSize = SIZES["default"],
        *,
        seed: int = 0,
        from_scratch: bool = False,
        clip_checkpoint: str = "",
        clip_rn_checkpoint: str = "",
        methods: Sequence[str] = tuple(METHODS),
        data_seed: Optional[int] = None,
        pretrain_variant: str = DEFAULT_PRETRAIN_VARIANT,
        threads: int = 0,
        jobs: int = 2,
        log: Callable[[str], None] = print,
    ):
        unknown = [m for m in methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; known: {sorted(ALL_METHODS)}")
        self.out_dir = os.path.abspath(out_dir)
        self.size = size
        self.seed = int(seed)
        self.data_seed = self.seed if data_seed is None else int(data_seed)
        self.from_scratch = from_scratch
        if pretrain_variant not in PRETRAIN_VARIANTS:
            raise ValueError(
                f"Unknown pretraining variant {pretrain_variant!r}; "
                f"known: {list(PRETRAIN_VARIANTS)}"
            )
        self.pretrain_variant = pretrain_variant
        self.clip_checkpoints = {"vit": clip_checkpoint, "rn": clip_rn_checkpoint}
        self.methods = [ALL_METHODS[m] for m in methods]
        if any(m.vild for m in self.methods) and "fvlm" not in methods:
            self.methods.insert(0, METHODS["fvlm"])  # its RPN gives ViLD's distillation proposals
        self.jobs = max(1, int(jobs))
        # One torch thread per process by default: with two processes on two cores, a second
        # OpenMP thread each made the tiny models' forward passes about 10x slower (measured).
        self.threads = threads or 1
        self.log = log
        self.datasets_root = os.path.join(self.out_dir, "datasets")
        self.data_dir = os.path.join(self.datasets_root, "ovdet_synthetic")
        self.captions_dir = os.path.join(self.datasets_root, "ovdet_synthetic_captions")
        self.timings: Dict[str, float] = {}
        self._step_index = 0
        self._step_lock = threading.Lock()
        self._in_process_lock = threading.Lock()  # model work in this process (_in_process_torch)
        self._captions_lock = threading.Lock()  # both from-scratch pretrainings use one folder
        self._num_steps = (
            2  # data, pictures
            + len(self._clip_names)
            + int(self._needs_clipself)
            + int(any(m.vild for m in self.methods))  # vild_embeddings
            + len(self.methods)
        )

    @property
    def _needs_clipself(self) -> bool:
        return any(m.backbone == "clipself" for m in self.methods)

    @property
    def _clip_names(self) -> List[str]:
        """The tiny CLIPs the methods use (keys of TINY_CLIPS, in its order)."""
        used = {m.clip for m in self.methods} | ({"vit"} if self._needs_clipself else set())
        return [name for name in TINY_CLIPS if name in used]

    # ------------------------------------------------------------------ step machinery
    def _step(self, name: str, key: Dict, run: Callable[[str], Dict]) -> Dict:
        """Run ``run(folder)`` unless ``folder/step.json`` holds the same key; return the record."""
        key = json.loads(json.dumps(key))  # as step.json stores it (tuples -> lists)
        with self._step_lock:  # steps run in parallel threads (_steps)
            self._step_index += 1
            tag = f"[{self._step_index}/{self._num_steps}] {name}"
        folder = os.path.join(self.out_dir, name)
        done = load_step(folder)
        if done is not None and done.get("key") == key:
            self.log(f"{tag}: reused (done before in {done['seconds']:.0f} s)")
            self.timings[name] = 0.0
            return done["record"]
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # a different key or an unfinished run: start the step afresh
        os.makedirs(folder)
        self.log(f"{tag}: running ...")
        start = time.perf_counter()
        try:
            record = run(folder)
        except Exception as e:  # said at once: the run ends only when the other running steps do
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            self.log(f"{tag}: FAILED ({first_line}); the run stops after the steps in progress")
            raise
        seconds = time.perf_counter() - start
        _write_json(
            os.path.join(folder, "step.json"), {"key": key, "record": record, "seconds": seconds}
        )
        self.timings[name] = seconds
        self.log(f"{tag}: done in {seconds:.0f} s")
        return record

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ, DETECTRON2_DATASETS=self.datasets_root)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH", "")]))
        env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def _run_tool(self, folder: str, log_name: str, args: List[str]) -> List[str]:
        """Run ``python tools/<args>`` with its output in ``folder/<log_name>``; on failure raise
        with the log's end. Returns the command line."""
        log_path = os.path.join(folder, log_name)
        cmd = [sys.executable, os.path.join(TOOLS_DIR, args[0]), *args[1:]]
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env())
        if proc.returncode != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(
                f"{args[0]} failed (exit {proc.returncode}); log {log_path}:\n{tail}"
            )
        return cmd

    @contextlib.contextmanager
    def _in_process_torch(self):
        """Model work in this process (zero-shot figures), one step thread at a time: torch's
        thread count is per process, set to ``threads`` meanwhile."""
        import torch

        with self._in_process_lock:
            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                yield
            finally:
                torch.set_num_threads(threads)

    # ------------------------------------------------------------------ steps
    def run(self) -> Dict:
        """Run every step; returns the results (also written to results.json / results.md)."""
        os.makedirs(self.out_dir, exist_ok=True)
        start = time.perf_counter()
        commit = _commit()  # the code this run started with (a commit made meanwhile is not it)
        self._step("data", {"data": self.size.data_overrides(self.data_seed)}, self._data)
        done = self._steps()
        clips = self._clips(done)
        clipself = done.get("clipself")
        results = {m.key: done[m.key] for m in self.methods}
        for m in (m for m in self.methods if m.fused):  # steps from before a figure existed
            opts = self._detector_opts(m, clips, clipself, "")
            for name, measure in self._region_figures(m, opts).items():
                if name not in results[m.key]:
                    results[m.key][name] = measure()
        rare_named = self._add_label_precision(results)
        pictures = self._pictures_step(clips, clipself, results, rare_named)
        total = time.perf_counter() - start
        report = {
            "machine": _machine(),
            "date": time.strftime("%Y-%m-%d"),
            "commit": commit,
            "size": asdict(self.size),
            "seed": self.seed,
            "data_seed": self.data_seed,
            # one record per tiny CLIP: "clip" (the ViT), "clip_rn" (the ResNet)
            **{TINY_CLIPS[name].step: rec for name, rec in clips.items()},
            "methods": results,
            "pictures": pictures,
            "step_seconds": self.timings,
            "total_seconds": total,
        }
        _write_json(os.path.join(self.out_dir, "results.json"), report)
        with atomic_write_path(os.path.join(self.out_dir, "results.md")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(format_results_markdown(report))
        self.log(f"results: {os.path.join(self.out_dir, 'results.md')} ({total:.0f} s in all)")
        return report

    def _data(self, folder: str) -> Dict:
        from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset

        meta = generate_synthetic_dataset(
            self.data_dir,
            overwrite=True,
            progress=False,
            **self.size.data_overrides(self.data_seed),
        )
        with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        groups: Dict[str, int] = {}
        for c in meta["categories"]:
            groups[c["frequency"]] = groups.get(c["frequency"], 0) + 1
        return {"dir": self.data_dir, "categories_per_group": groups}

    def _clip_step(self, name: str) -> Dict:
        """The tiny CLIP ``name`` (a key of TINY_CLIPS): a given or the shipped checkpoint, or
        pretrained here (``from_scratch``)."""
        tiny = TINY_CLIPS[name]
        if self.clip_checkpoints[name]:
            source = {"checkpoint": os.path.abspath(self.clip_checkpoints[name])}
        elif self.from_scratch:
            variant = self.pretrain_variant if name == "vit" else ""  # RO-ViT's ViT recipes
            source = {
                "pretrain": {
                    "variant": variant,
                    "config": _config_digest(tiny.pretrain_config),
                    "opts": self._pretrain_opts(name, variant),
                    "captions": self.size.caption_overrides(self.data_seed),
                }
            }
        else:
            if not os.path.isfile(tiny.shipped):
                raise FileNotFoundError(
                    f"The shipped tiny CLIP {tiny.shipped} is missing (a partial checkout?). "
                    "Restore it with git, or pretrain one here with --from-scratch."
                )
            source = {"checkpoint": tiny.shipped}
        if "checkpoint" in source:
            source["sha256"] = file_sha256(source["checkpoint"])
        key = {"data": self.size.data_overrides(self.data_seed), "source": source}
        return self._step(tiny.step, key, lambda folder: self._clip(folder, source, tiny))

    def _clip(self, folder: str, source: Dict, tiny: TinyClip) -> Dict:
        from ovdet_plugin.clip import build_clip_model, clip_image_size, get_clip_tokenizer
        from ovdet_plugin.evaluation.zero_shot_crops import load_crops, zero_shot_accuracy

        path = os.path.join(folder, "tiny_clip.pt")
        if "checkpoint" in source:
            expected = _shipped_sha256(source["checkpoint"])
            if expected and expected != source["sha256"]:
                raise ValueError(
                    f"{source['checkpoint']} does not match the sha256 in its .json record "
                    f"({source['sha256'][:12]} vs {expected[:12]}): the file is corrupt or was "
                    "replaced. Restore it with git, or pretrain one with --from-scratch."
                )
            shutil.copyfile(source["checkpoint"], path)
            record: Dict = {"source": source["checkpoint"]}
        else:
            record = self._pretrain(folder, source["pretrain"], path, tiny)
        with self._in_process_torch():
            model = build_clip_model(tiny.model_name, path)
            crops = load_crops(self.data_dir, clip_image_size(model)[0])
            acc = zero_shot_accuracy(model, get_clip_tokenizer(tiny.model_name), crops)
        record.update(path=path, zero_shot=acc, model_name=tiny.model_name)
        self.log(
            f"    {tiny.model_name} zero-shot crop accuracy: rare {acc['r']:.1f}%, "
            f"common {acc['c']:.1f}%, frequent {acc['f']:.1f}%, all {acc['all']:.1f}% "
            f"({acc['n_all']} val crops)"
        )
        return record

    def _pretrain_opts(self, name: str, variant: str) -> List[str]:
        """The config overrides of tools/pretrain_rovit.py (``from_scratch``) for the tiny CLIP
        ``name``: output folder, seed, schedule, the caption folder (absolute paths) and the
        overrides of ``variant`` (a key of PRETRAIN_VARIANTS, or "" for none)."""
        s, cap = self.size, self.captions_dir
        spec = f"name={CAPTIONS_VAL},format=lvis,json={cap}/val.json,images={cap}"
        steps = s.pretrain_steps if name == "vit" else s.pretrain_steps_rn
        return [
            "OUTPUT_DIR", os.path.join(self.out_dir, TINY_CLIPS[name].step, "pretrain"),
            "SEED", str(self.seed),
            "SOLVER.MAX_ITER", str(steps),
            "SOLVER.IMS_PER_BATCH", str(s.pretrain_batch),
            "SOLVER.BASE_LR", str(s.pretrain_lr),
            "MODEL.OVD.ROVIT.CAPTION_FILES", os.path.join(cap, "captions.jsonl"),
            "MODEL.OVD.ROVIT.IMAGE_ROOT", cap,
            "MODEL.OVD.CUSTOM_DATASETS", json.dumps([spec]),
            *(PRETRAIN_VARIANTS[variant] if variant else []),
        ]  # fmt: skip

    def _captions(self, folder: str, overrides: Dict) -> Dict:
        """The caption folder, by tools/generate_synthetic_data.py (kept when it holds the same
        config). Returns its command line and meta.json."""
        from ovdet_plugin.data.synthetic import SyntheticConfig

        cap = self.captions_dir
        expected = json.loads(json.dumps(asdict(replace(SyntheticConfig(), **overrides))))
        meta_path = os.path.join(cap, "meta.json")
        if os.path.isdir(cap):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    same = json.load(f).get("config") == expected
            except (OSError, ValueError):
                same = False
            if not same:  # another config, or a folder the generator did not finish
                shutil.rmtree(cap)
        o = overrides
        cmd = self._run_tool(
            folder, "captions.log",
            ["generate_synthetic_data.py", "--out", cap, "--seed", str(o["seed"]),
             "--num-train", str(o["num_train"]), "--num-val", str(o["num_val"]),
             "--num-pretrain", str(o["num_pretrain"]), "--pretrain-style", o["pretrain_style"],
             "--no-progress"],
        )  # fmt: skip
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta["config"] != expected:
            raise RuntimeError(f"{cap} holds another caption config than the benchmark's")
        return {"command": cmd, "meta": meta}

    def _pretrain(self, folder: str, p: Dict, path: str, tiny: TinyClip) -> Dict:
        """``from_scratch``: the caption folder, then tools/pretrain_rovit.py with the tiny CLIP's
        pretraining config and ``p["opts"]``; its rovit_clip_final.pt is copied to ``path``."""
        with self._captions_lock:  # the other pretraining finds the folder made (kept)
            captions = self._captions(folder, p["captions"])
        self.log(
            f"    caption folder {self.captions_dir}: "
            f"{captions['meta']['counts']['pretrain_images']} caption images"
        )
        opts = p["opts"]
        out = opts[opts.index("OUTPUT_DIR") + 1]
        self.log(
            f"    pretraining {tiny.model_name}: tools/pretrain_rovit.py "
            f"(log {folder}/pretrain.log)"
        )
        cmd = self._run_tool(
            folder,
            "pretrain.log",
            ["pretrain_rovit.py", "--config-file", tiny.pretrain_config, *opts],
        )
        final = os.path.join(out, "rovit_clip_final.pt")
        if not os.path.isfile(final):
            raise RuntimeError(f"tools/pretrain_rovit.py wrote no {final}")
        shutil.copyfile(final, path)
        curve = read_zero_shot_curve(os.path.join(out, "metrics.json"))
        if curve:
            last = curve[-1]
            self.log(
                f"    zero-shot crop accuracy on {last['dataset']} (the caption folder's val, "
                f"recipe split) at iteration {last['iteration'] + 1}: rare {last['r']:.1f}%, "
                f"all {last['all']:.1f}%"
            )
        return {
            "source": "pretrained here by tools/pretrain_rovit.py",
            "variant": p["variant"],
            "command": shlex.join(cmd),
            "caption_command": shlex.join(captions["command"]),
            "config": os.path.relpath(tiny.pretrain_config, REPO_ROOT),
            "opts": opts,
            "seed": self.seed,
            "caption_data": captions["meta"]["config"],
            "caption_counts": captions["meta"]["counts"],
            "zero_shot_curve": curve,
            "pretrain_dir": out,
        }

    def _clipself_step(self, clip: Dict) -> Dict:
        s = self.size
        opts = [
            "MODEL.OVD.CLIP.PRETRAINED", clip["path"],
            "SOLVER.MAX_ITER", str(s.clipself_iters),
            "SOLVER.IMS_PER_BATCH", str(s.clipself_batch),
            "SOLVER.WARMUP_ITERS", str(min(10, s.clipself_iters)),
            "SEED", str(self.seed),
        ]  # fmt: skip
        key = {
            "clip": _file_digest(clip["path"]),
            "config": _config_digest("clipself.yaml"),
            "opts": opts,
        }

        def run(folder: str) -> Dict:
            self._run_tool(
                folder,
                "log.txt",
                ["train_clipself.py", "--config-file", os.path.join(CONFIG_DIR, "clipself.yaml"),
                 *opts, "OUTPUT_DIR", folder],
            )  # fmt: skip
            path = os.path.join(folder, "clipself_final.pt")
            if not os.path.isfile(path):
                raise RuntimeError(f"CLIPSelf wrote no {path}")
            return {"path": path}

        return self._step("clipself", key, run)

    def _clips(self, done: Dict[str, Dict]) -> Dict[str, Dict]:
        """The tiny CLIPs' records among the finished steps ``done``, by TINY_CLIPS key."""
        return {n: done[TINY_CLIPS[n].step] for n in self._clip_names if TINY_CLIPS[n].step in done}

    def _steps(self) -> Dict[str, Dict]:
        """Every step between the data and the pictures, ``jobs`` at a time (one torch thread
        each), as one dependency graph: a step starts once what it needs is done. The detectors
        on a tiny CLIP wait for it, so with ``from_scratch`` F-VLM starts as soon as the ResNet
        is pretrained while the ViT still pretrains; the methods on CLIPSelf's export wait for
        CLIPSelf (which waits for the ViT), ViLD's targets for the F-VLM detector (its RPN gives
        the proposals), the ViLD methods for the targets. Ready steps start in this order: the
        tiny CLIPs (the two from-scratch pretrainings side by side), the F-VLM detector (ViLD's
        chain waits for it) and the detectors that need nothing else (RO-ViT), then CLIPSelf and
        the detectors on its export (F-ViT), ViLD's targets and ViLD, the oracle last. With the
        default size's step times of two timed runs (860 and 912 s of steps) this order ends the
        training steps 16 and 21 s earlier than starting CLIPSelf beside F-VLM, which left one
        core idle for the last 83-98 s (benchmarks/RESULTS.md, sixth session). Returns step name
        -> record (the tiny CLIPs under their TINY_CLIPS step names)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        steps: Dict[str, tuple] = {}  # name -> (start rank, steps it needs, run(done) -> record)
        for name in self._clip_names:
            steps[TINY_CLIPS[name].step] = (-1, [], lambda done, n=name: self._clip_step(n))
        vit = TINY_CLIPS["vit"].step
        if self._needs_clipself:
            steps["clipself"] = (2, [vit], lambda done: self._clipself_step(done[vit]))
        for m in self.methods:
            if not m.vild:
                on_clipself = m.backbone == "clipself"
                needs = [TINY_CLIPS[m.clip].step] + (["clipself"] if on_clipself else [])
                rank = 0 if m.key == "fvlm" else 5 if m.oracle else 3 if on_clipself else 1
                steps[m.key] = (rank, needs, self._detector_runner(m))
        if any(m.vild for m in self.methods):
            teacher = TINY_CLIPS[METHODS["vild"].clip].step
            embed = lambda done: self._vild_step(self._clips(done), done["fvlm"])  # noqa: E731
            steps["vild_embeddings"] = (4, ["fvlm", teacher], embed)
            for m in self.methods:
                if m.vild:
                    needs = ["vild_embeddings", TINY_CLIPS[m.clip].step]
                    steps[m.key] = (4, needs, self._detector_runner(m))
        # rank, then the methods' listed order (sorted is stable)
        order = sorted(steps, key=lambda name: steps[name][0])
        done: Dict[str, Dict] = {}
        running: Dict = {}  # future -> step name
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while order or running:
                for name in [n for n in order if all(d in done for d in steps[n][1])]:
                    if len(running) >= self.jobs:
                        break
                    order.remove(name)
                    running[pool.submit(steps[name][2], dict(done))] = name
                if not running:  # cannot happen with the dependencies above; never spin
                    raise RuntimeError(f"Steps {order} need steps that do not run")
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    done[running.pop(future)] = future.result()  # a failed step raises here
        return done

    def _detector_runner(self, method: Method) -> Callable[[Dict], Dict]:
        """The method's detector step as a function of the records of the steps it needs."""

        def run(done: Dict[str, Dict]) -> Dict:
            vild_dir = done["vild_embeddings"]["dir"] if method.vild else ""
            clips = self._clips(done)
            return self._detector_step(method, clips, done.get("clipself"), vild_dir)

        return run

    def _vild_step(self, clips: Dict[str, Dict], fvlm: Dict) -> Dict:
        """ViLD's distillation targets: proposals of the F-VLM detector's RPN (trained on base
        classes), embedded by ViLD's tiny CLIP (its teacher). Returns the record (``dir``: the
        embeddings folder)."""
        rpn = fvlm["weights"]  # (its digest covers the frozen tower: the weights hold it)
        rpn_clip = clips[METHODS["fvlm"].clip]["path"]  # the F-VLM detector's frozen tower
        teacher = METHODS["vild"].clip
        opts = [
            "--config-file", os.path.join(CONFIG_DIR, "fvlm.yaml"),
            "--dataset", "ovdet_synthetic_train",
            "--clip-model", TINY_CLIPS[teacher].model_name,
            "--clip-pretrained", clips[teacher]["path"],
            "--max-proposals", str(self.size.vild_proposals),
        ]  # fmt: skip
        key = {"rpn": _file_digest(rpn), "clip": _file_digest(clips[teacher]["path"]), "opts": opts}

        def run(folder: str) -> Dict:
            out = os.path.join(folder, "embeddings")
            self._run_tool(
                folder,
                "log.txt",
                ["precompute_vild_embeddings.py", *opts, "--output", out,
                 "MODEL.WEIGHTS", rpn, "MODEL.OVD.CLIP.PRETRAINED", rpn_clip],
            )  # fmt: skip
            return {"dir": out}

        return self._step("vild_embeddings", key, run)

    def _detector_opts(
        self, method: Method, clips: Dict[str, Dict], clipself: Optional[Dict], vild_dir: str
    ):
        s = self.size
        iters = detector_iters(method.config, s)
        opts = [
            "MODEL.OVD.CLIP.PRETRAINED", clips[method.clip]["path"],
            "SOLVER.MAX_ITER", str(iters),
            "SOLVER.STEPS", f"({int(iters * 0.8)},)",
            "SOLVER.WARMUP_ITERS", str(min(50, iters)),
            "SOLVER.IMS_PER_BATCH", str(s.detector_batch),
            "SEED", str(self.seed),
        ]  # fmt: skip
        if method.backbone == "clipself":
            opts += ["MODEL.OVD.BACKBONE.PRETRAINED", clipself["path"]]
        if method.vild:
            opts += ["MODEL.OVD.VILD.EMBEDDINGS_DIR", vild_dir]
        return opts + list(method.opts)

    def _detector_step(self, method: Method, clips: Dict, clipself, vild_dir: str) -> Dict:
        opts = self._detector_opts(method, clips, clipself, vild_dir)
        # a fused method's detector-only figures: the trained model evaluated again with the
        # fusion off and boxes only (the tables report the detector-only boxes), in the same
        # process (OVDTrainer.test), into folder/detector_only
        only_opts = ["MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY", "True"] if method.fused else []
        inputs = [clips[method.clip]["path"]]
        if method.backbone == "clipself":
            inputs.append(clipself["path"])
        key = {
            "config": _config_digest(method.config),
            "opts": opts + only_opts,
            "inputs": [_file_digest(p) for p in inputs],
            "vild": _dir_digest(vild_dir) if method.vild else "",
        }
        config = os.path.join(CONFIG_DIR, method.config)

        def run(folder: str) -> Dict:
            self._run_tool(
                folder, "train.log",
                ["train_net.py", "--config-file", config, *opts, *only_opts,
                 "OUTPUT_DIR", folder],
            )  # fmt: skip
            results = _read_results(folder)
            record = {"title": method.title, "fused": _bbox(results)}
            mask = _ap(results, "segm")  # the method's own output (fused), as the papers report it
            if mask:
                record["mask"] = mask
            weights = os.path.join(folder, "model_final.pth")
            record["weights"] = weights
            if method.fused:
                record["detector_only"] = _bbox(_read_results(_detector_only_dir(folder)))
                record.update({k: v() for k, v in self._region_figures(method, opts).items()})
            r = record["fused"]
            self.log(
                f"    {method.title}: AP {r['AP']:.1f}  APr {r['APr']:.1f}  APc {r['APc']:.1f}  "
                f"APf {r['APf']:.1f}"
                + (f"  (detector only APr {record['detector_only']['APr']:.1f})"
                   if method.fused else "")
                + (f"  mask AP {record['mask']['AP']:.1f} APr {record['mask']['APr']:.1f}"
                   if "mask" in record else "")
            )  # fmt: skip
            return record

        return self._step(method.key, key, run)

    def _region_figures(self, method: Method, opts: Sequence[str]) -> Dict[str, Callable]:
        """The region zero-shot figures a fused method's record holds, as name -> a call that
        measures it: ``region_zero_shot`` (the scorer it fuses) and, when its config crops the
        regions elsewhere than the paper (``VLM_SCORER.CROP_STAGE`` other than "res5", or
        ``TOWER_WINDOW``), ``region_zero_shot_map``: the same scorer on its tower's map of the
        whole image (the paper's region feature)."""
        from ovdet_plugin.config import get_ovdet_cfg

        figures = {"region_zero_shot": lambda: self._region_zero_shot(method, opts)}
        sc = get_ovdet_cfg(os.path.join(CONFIG_DIR, method.config), list(opts)).MODEL.OVD.VLM_SCORER
        if sc.CROP_STAGE != "res5" or sc.TOWER_WINDOW:
            on_map = [*opts, "MODEL.OVD.VLM_SCORER.CROP_STAGE", "res5",
                      "MODEL.OVD.VLM_SCORER.TOWER_WINDOW", "0"]  # fmt: skip
            figures["region_zero_shot_map"] = lambda: self._region_zero_shot(
                method, on_map, "on the whole image's map, the paper's region feature"
            )
        return figures

    def _region_zero_shot(
        self, method: Method, opts: Sequence[str], what: str = "the score it fuses"
    ) -> Dict[str, float]:
        """Region zero-shot accuracy of the scorer a fused method fuses (its config and options:
        tower, crop convention, prompts), on the val boxes inside their whole images
        (:func:`~ovdet_plugin.evaluation.region_zero_shot.method_region_zero_shot`)."""
        from ovdet_plugin.config import get_ovdet_cfg
        from ovdet_plugin.evaluation.region_zero_shot import method_region_zero_shot

        cfg = get_ovdet_cfg(os.path.join(CONFIG_DIR, method.config), list(opts))
        with self._in_process_torch():
            acc = method_region_zero_shot(cfg, self.data_dir)
        self.log(
            f"    {method.title}: region zero-shot ({cfg.MODEL.OVD.VLM_SCORER.NAME}, {what}; val "
            f"boxes inside whole images): rare {acc['r']:.1f}%, all {acc['all']:.1f}%"
        )
        return dict(acc, scorer=cfg.MODEL.OVD.VLM_SCORER.NAME)

    def _pictures_step(
        self, clips: Dict[str, Dict], clipself, results: Dict, rare_named: Dict[str, List[int]]
    ) -> Dict:
        """Visualizer pictures of val images holding a rare category, with a typed vocabulary
        (the names of their objects plus two absent kinds), for the open-vocabulary method (not
        an oracle) with the best APr; scored from what is drawn (``tools/demo.py
        --save-detections``).

        The first ``num_pictures`` val images that hold a rare object are drawn as they come.
        When the method's evaluation detections (the drawing selection, val vocabulary) name no
        rare object correctly in any of them, the first val image where they do is drawn too,
        recorded as ``selected`` with how many of the val images holding a rare object have one
        named (``rare_named_images`` of ``rare_images``): an example, with its rate beside it.

        Args:
            rare_named: per method, the val image ids where its drawn evaluation detections name
                a rare object correctly (from :meth:`_add_label_precision`).
        """
        from ovdet_plugin.evaluation.label_precision import label_precision, load_json

        candidates = [k for k in results if not ALL_METHODS[k].oracle] or list(results)
        best = max(candidates, key=lambda k: results[k]["fused"]["APr"])
        method = ALL_METHODS[best]
        val = load_json(os.path.join(self.data_dir, "val.json"))
        image_ids, selected = _picture_image_ids(val, self.size.num_pictures, rare_named[best])
        images, vocabulary = _picture_inputs(val, self.data_dir, image_ids)
        opts = self._detector_opts(method, clips, clipself, "")
        key = {"method": best, "weights": _file_digest(results[best]["weights"]), "images": images,
               "vocabulary": vocabulary, "opts": opts, "threshold": PICTURE_THRESHOLD,
               "top_k": PICTURE_TOP_K, "scored": "drawn"}  # fmt: skip

        def run(folder: str) -> Dict:
            self._run_tool(
                folder, "demo.log",
                ["demo.py", "--config-file", os.path.join(CONFIG_DIR, method.config),
                 "--vocabulary", ", ".join(vocabulary), "--input", *images,
                 "--output", folder, "--confidence-threshold", str(PICTURE_THRESHOLD),
                 "--top-k", str(PICTURE_TOP_K), "--scale", "4", "--save-detections",
                 *opts, "MODEL.WEIGHTS", results[best]["weights"]],
            )  # fmt: skip
            pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
            saved = load_json(os.path.join(folder, "detections.json"))
            drawn = _drawn_as_results(saved, val, self.data_dir)
            lp = label_precision(drawn, val, PICTURE_THRESHOLD, PICTURE_TOP_K, image_ids=image_ids)
            return {
                "method": best,
                "vocabulary": vocabulary,
                "files": pngs,
                "dir": folder,
                "selected": None if selected is None else _png_name(val, selected),
                "rare_images": len(_rare_image_ids(val)),
                "rare_named_images": len(rare_named[best]),
                "label_precision": lp,
                "rare_found_and_named": bool(lp.pop("rare_correct_images")),
            }

        return self._step("pictures", key, run)

    def _add_label_precision(self, results: Dict[str, Dict]) -> Dict[str, List[int]]:
        """Each method's ``label_precision`` (and ``label_precision_detector_only`` for a fused
        one) over the whole val split, from the LVISEvaluator's saved detections. Returns, per
        method, the val image ids where its drawn detections name a rare object correctly."""
        from ovdet_plugin.evaluation.label_precision import label_precision, load_json

        val = load_json(os.path.join(self.data_dir, "val.json"))

        def measure(folder: str) -> Dict:
            return label_precision(
                _evaluator_detections(folder), val, PICTURE_THRESHOLD, PICTURE_TOP_K
            )

        rare_named = {}
        for key, rec in results.items():
            folder = os.path.join(self.out_dir, key)
            rec["oracle"] = ALL_METHODS[key].oracle
            rec["label_precision"] = measure(folder)
            rare_named[key] = rec["label_precision"].pop("rare_correct_images")
            if "detector_only" in rec:
                rec["label_precision_detector_only"] = measure(_detector_only_dir(folder))
                rec["label_precision_detector_only"].pop("rare_correct_images")
            self.log(f"    {rec['title']}: labels correct among drawn detections: "
                     f"{format_label_precision(rec['label_precision'])}")  # fmt: skip
        return rare_named


def read_zero_shot_curve(metrics_json: str) -> List[Dict]:
    """The ``zero_shot/<dataset>/<group>`` scalars of a pretraining run's metrics.json (written
    by tools/pretrain_rovit.py's eval hook), one row per evaluation: ``{"iteration", "dataset",
    <group>: accuracy %, ...}`` in file order. Empty when the file or the scalars are missing."""
    rows: List[Dict] = []
    if not os.path.isfile(metrics_json):
        return rows
    with open(metrics_json, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            per_dataset: Dict[str, Dict] = {}
            for key, value in entry.items():
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == "zero_shot":
                    per_dataset.setdefault(parts[1], {})[parts[2]] = value
            for name, groups in per_dataset.items():
                rows.append({"iteration": entry.get("iteration"), "dataset": name, **groups})
    return rows


def _shipped_sha256(checkpoint: str) -> str:
    record = os.path.splitext(checkpoint)[0] + ".json"
    if not os.path.isfile(record):
        return ""
    with open(record, encoding="utf-8") as f:
        return json.load(f).get("sha256", "")


def _file_digest(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.basename(path)}:{st.st_size}:{file_sha256(path)[:16]}"


def _dir_digest(path: str) -> str:
    if not path:
        return ""
    files = sorted(os.listdir(path))
    return hashlib.sha256(
        "".join(_file_digest(os.path.join(path, f)) for f in files).encode()
    ).hexdigest()[:16]


def _read_results(folder: str) -> Dict:
    from ovdet_plugin.engine.trainer import EVAL_RESULTS_FILE

    path = os.path.join(folder, EVAL_RESULTS_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(f"No evaluation results in {path}: did the evaluator run?")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _detector_only_dir(folder: str) -> str:
    """Where the detector step's run wrote its detector-only evaluation."""
    from ovdet_plugin.engine.trainer import DETECTOR_ONLY_DIR

    return os.path.join(folder, DETECTOR_ONLY_DIR)


def evaluator_detections_path(folder: str) -> str:
    """Where the LVISEvaluator saves the detections of a train_net.py run on the val split."""
    return os.path.join(folder, "inference", VAL_DATASET, "lvis_instances_results.json")


def _evaluator_detections(folder: str) -> str:
    """The LVISEvaluator's saved detections of a train_net.py run on the val split."""
    path = evaluator_detections_path(folder)
    if not os.path.isfile(path):
        raise RuntimeError(f"No saved detections {path}: did the LVISEvaluator run?")
    return path


def _rare_image_ids(val: Dict) -> List[int]:
    """The ids of the val images that hold at least one rare-class object, in id order."""
    rare = {c["id"] for c in val["categories"] if c.get("frequency") == "r"}
    return sorted({a["image_id"] for a in val["annotations"] if a["category_id"] in rare})


def _picture_image_ids(val: Dict, count: int, rare_named: Sequence[int]):
    """``(ids, selected)``: the first ``count`` val images that hold a rare object (the first
    ``count`` images when none does); plus, when none of them is in ``rare_named`` (the images
    where the pictured method names a rare object correctly), the first image that is, returned
    as ``selected`` too (``None`` when nothing was added)."""
    holding = _rare_image_ids(val)
    ids = (holding or sorted(img["id"] for img in val["images"]))[:count]
    selected = None
    if rare_named and not set(ids) & set(rare_named):
        selected = min(rare_named)
        ids.append(selected)
    return ids, selected


def _png_name(val: Dict, image_id: int) -> str:
    """The picture tools/demo.py writes for a val image (its base name as .png)."""
    name = next(img["file_name"] for img in val["images"] if img["id"] == image_id)
    return os.path.splitext(os.path.basename(name))[0] + ".png"


def _picture_inputs(val: Dict, data_dir: str, image_ids: Sequence[int]):
    """The image paths of ``image_ids`` and a vocabulary typed from their objects' names plus
    two kinds that none of them holds."""
    cats = {c["id"]: c["name"] for c in val["categories"]}
    chosen = set(image_ids)
    present = sorted(
        {cats[a["category_id"]] for a in val["annotations"] if a["image_id"] in chosen}
    )
    absent = [c["name"] for c in val["categories"] if c["name"] not in present][:2]
    files = {img["id"]: img["file_name"] for img in val["images"]}
    return [os.path.join(data_dir, files[i]) for i in image_ids], present + absent


def _drawn_as_results(saved: Sequence[Dict], val: Dict, data_dir: str) -> List[Dict]:
    """tools/demo.py's saved detections (``--save-detections``, its detections.json records) as
    COCO results of the val split: the typed names mapped to val category ids, the image paths
    to val image ids."""
    by_name = {c["name"]: c["id"] for c in val["categories"]}
    by_path = {os.path.join(data_dir, img["file_name"]): img["id"] for img in val["images"]}
    return [
        {"image_id": by_path[r["file_name"]], "category_id": by_name[r["category"]],
         "bbox": r["bbox"], "score": r["score"]}  # fmt: skip
        for r in saved
    ]


def _machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {cpu}, no GPU used"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        return (
            out.stdout.strip() + ("+local changes" if dirty else "") if out.returncode == 0 else ""
        )
    except OSError:
        return ""


def method_table_header(first_column: str = "method") -> List[str]:
    """The two header lines of a table of :func:`format_method_row` rows."""
    return [
        f"| {first_column} | AP | APr | APc | APf | APr detector only | mask AP | mask APr |",
        "|---|---|---|---|---|---|---|---|",
    ]


def format_method_row(rec: Dict) -> str:
    """One method's row under :func:`method_table_header` from its step record."""
    r = rec["fused"]
    only = f"{rec['detector_only']['APr']:.1f}" if "detector_only" in rec else "-"
    mask = rec.get("mask")
    masks = f"{mask['AP']:.1f} | {mask['APr']:.1f}" if mask else "- | -"
    return (
        f"| {rec['title']} | {r['AP']:.1f} | {r['APr']:.1f} | {r['APc']:.1f} | "
        f"{r['APf']:.1f} | {only} | {masks} |"
    )


def format_label_precision(lp: Optional[Dict]) -> str:
    """``73% (n=412), rare 40% (n=50)`` from :func:`label_precision`'s dict."""
    if not lp:
        return "-"

    def pct(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.0f}%"

    return (
        f"{pct(lp['precision'])} (n={lp['n']}), rare {pct(lp['rare_precision'])} (n={lp['n_rare']})"
    )


def format_results_markdown(report: Dict) -> str:
    """results.md: the zero-shot figure, one row per method (fused and detector-only), timings."""
    lines = [
        "# ovdet generated-data benchmark",
        "",
        f"{report['date']}, {report['machine']}, commit {report['commit'] or 'unknown'}, "
        f"seed {report['seed']}. Box AP (%) from Detectron2's stock LVISEvaluator on "
        f"ovdet_synthetic_val (mask AP of the same detections, class-agnostic mask head, in the "
        f"last two columns); detectors trained on the base (frequent + common) classes.",
        "",
    ]
    for name, tiny in TINY_CLIPS.items():
        if tiny.step not in report:
            continue
        users = [r["title"] for k, r in report["methods"].items() if ALL_METHODS[k].clip == name]
        z = report[tiny.step]["zero_shot"]
        lines += [
            f"Tiny CLIP {tiny.model_name} ({report[tiny.step]['source']}; used by "
            f"{', '.join(users) or 'CLIPSelf'}): zero-shot crop accuracy rare {z['r']:.1f}%, "
            f"common {z['c']:.1f}%, frequent {z['f']:.1f}%, all {z['all']:.1f}% "
            f"({z['n_all']} val crops; chance {100 / 32:.1f}%).",
            "",
        ]
    regions = [
        f"{rec['title']} ({z['scorer']}) rare {z['r']:.1f}%, all {z['all']:.1f}%"
        + (
            f" (its most frequent answer, {z['top_name']}, for {z['top_share']:.0f}% of the boxes)"
            if "top_name" in z
            else ""
        )
        + (
            f"; on the whole image's map, the paper's region feature: rare {m['r']:.1f}%, all "
            f"{m['all']:.1f}%"
            if m
            else ""
        )
        for rec in report["methods"].values()
        for z, m in [(rec.get("region_zero_shot"), rec.get("region_zero_shot_map"))]
        if z
    ]
    if regions:
        lines += [
            "Region zero-shot accuracy of the score each fused method fuses (the val boxes scored "
            "inside their whole images, as at test time; benchmarks/region_zero_shot.py): "
            + "; ".join(regions)
            + ".",
            "",
        ]
    lines += method_table_header()
    lines += [format_method_row(rec) for rec in report["methods"].values()]
    if any(rec.get("oracle") for rec in report["methods"].values()):
        lines += ["", "The oracle row is trained on every class's boxes and evaluated detector "
                  "only: the ceiling APr for the open-vocabulary rows."]  # fmt: skip
    methods = [rec for rec in report["methods"].values() if "label_precision" in rec]
    if methods:
        lp = methods[0]["label_precision"]
        lines += [
            "",
            f"Labels correct among drawn detections (the pictures' selection: score >= "
            f"{lp['score_threshold']:g}, the {lp['top_k']} highest per image; correct = a "
            f"ground-truth object of the same class with IoU >= {lp['iou_threshold']:g}; all "
            f"{lp['images']} val images; rare = rare-class labels):",
            "",
        ]
        for rec in methods:
            line = f"- {rec['title']}: {format_label_precision(rec['label_precision'])}"
            if "label_precision_detector_only" in rec:
                line += "; detector only " + format_label_precision(
                    rec["label_precision_detector_only"]
                )
            lines.append(line)
    p = report["pictures"]
    lines += [
        "",
        f"Pictures ({p['method']}, vocabulary \"{', '.join(p['vocabulary'])}\"): "
        + ", ".join(f"pictures/{f}" for f in p["files"]),
    ]
    if "label_precision" in p:
        lines += [
            "",
            f"On the pictures (the detections drawn, typed vocabulary): labels correct "
            f"{format_label_precision(p['label_precision'])}; a rare kind found and named "
            f"correctly: {'yes' if p['rare_found_and_named'] else 'no'}.",
        ]
    if "rare_named_images" in p:
        rate = (
            f"{p['method']} names a rare object correctly in {p['rare_named_images']} of the "
            f"{p['rare_images']} val images that hold one (evaluation detections, the drawing "
            f"selection)."
        )
        if p.get("selected"):
            rate = (
                f"pictures/{p['selected']} is selected: none of the first {len(p['files']) - 1} "
                f"val images holding a rare object had one named correctly, so the first val "
                f"image where {p['method']} names one was added. " + rate
            )
        lines += ["", rate]
    lines += [
        "",
        "Step times (s; 0 = reused): "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["step_seconds"].items())
        + f"; total {report['total_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def with_size(name: str, **overrides) -> BenchmarkSize:
    """``SIZES[name]`` with some fields replaced."""
    if name not in SIZES:
        raise ValueError(f"Unknown size {name!r}; known: {sorted(SIZES)}")
    return replace(SIZES[name], **overrides)
