"""LazyConfig support: Python configs (``configs/lazy/*.py``) for Detectron2's ``instantiate`` and
the ``lazyconfig_train_net.py`` pattern (``tools/lazyconfig_train_net.py``).

**Design.** A lazy config here is an explicit ``L(...)`` tree of the model's parts, as in
Detectron2's ``configs/common/models/*.py``::

    ovd = L(yaml_config)(config_file="lvis/fvlm_RN50_FPN.yaml", opts=[])
    model = L(OVDetGeneralizedRCNN)(
        backbone=L(build_backbone)(cfg="${ovd}"),
        proposal_generator=L(BackbonePart)(build=proposal_generator_on_backbone, cfg="${ovd}"),
        roi_heads=L(BackbonePart)(build=build_roi_heads_with_backbone, cfg="${ovd}"),
        ...)

Every part is built by the builder the YAML path uses (``build_backbone``,
``build_proposal_generator``, :func:`build_roi_heads_with_backbone`), so there is no second
implementation of any model part, and the recipe's numbers stay where they are (the paper YAML and
``config.py``): the node ``ovd`` is that YAML config plus ``opts``. The model a lazy config builds
is therefore the YAML model (a test compares state-dict keys and shapes).

- Change a recipe value with ``ovd.opts``, e.g. ``'ovd.opts=["MODEL.OVD.TRAIN_VOCABULARY","cat,
  dog"]'`` on the command line; every part sees it.
- Replace a whole part with your own ``L(...)`` node, e.g. ``model.backbone = L(MyBackbone)(...)``:
  the proposal generator and ROI heads are :class:`BackbonePart` s, built by
  ``OVDetGeneralizedRCNN`` with
  whatever backbone it gets. That is also how the ROI heads get the backbone (their VLM scorer
  shares the frozen CLIP tower): ``instantiate`` builds each node on its own, so a node cannot
  receive the object another node becomes.
- ``train`` (iterations, AMP, checkpoint period, ...) is read from the YAML when the lazy config
  is loaded; ``dataloader``, ``optimizer`` and ``lr_multiplier`` are built from ``ovd`` by the
  plugin's own builders (``OVDTrainer``'s mapper, optimizer and Detectron2's schedule).
"""

import copy
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.solver import build_lr_scheduler

from .config import get_ovdet_cfg
from .modeling.meta_arch import BackbonePart, OVDetGeneralizedRCNN
from .modeling.roi_heads.ov_roi_heads import build_roi_heads_with_backbone

__all__ = [
    "config_value",
    "lazy_ovd_config",
    "ovd_evaluator",
    "ovd_lr_multiplier",
    "ovd_optimizer",
    "ovd_test_loader",
    "ovd_train_loader",
    "ovrcnn_model",
    "proposal_generator_on_backbone",
    "resolve_config_path",
    "yaml_config",
]


def resolve_config_path(config_file: str) -> str:
    """``config_file`` if it exists (the package never looks into a checkout: a lazy config
    names its YAML relative to its own ``__file__``)."""
    if os.path.isfile(config_file):
        return config_file
    raise FileNotFoundError(
        f"YAML config {config_file!r} not found. Pass an existing path; a lazy config in "
        "configs/lazy/ names its YAML relative to its own file, e.g. "
        "os.path.join(os.path.dirname(__file__), '..', 'lvis', 'fvlm_RN50_FPN.yaml')."
    )


def yaml_config(config_file: str, opts: Sequence = ()) -> CfgNode:
    """The frozen YAML config the parts are built from: Detectron2's defaults + the ovdet keys +
    ``config_file`` + ``KEY VALUE`` overrides ``opts`` (strings, as on a command line)."""
    opts = [str(o) for o in opts]
    if len(opts) % 2:
        raise ValueError(
            f"ovd.opts must be KEY VALUE pairs, got an odd number of items: {opts}. Write e.g. "
            '["MODEL.OVD.TRAIN_VOCABULARY", "cat, dog"].'
        )
    cfg = get_ovdet_cfg(resolve_config_path(config_file), opts)
    cfg.freeze()
    return cfg


def config_value(cfg: CfgNode, key: str):
    """``cfg``'s value at the dotted ``key`` (e.g. "MODEL.PIXEL_MEAN"), as a plain copy."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return copy.deepcopy(node)


def proposal_generator_on_backbone(cfg: CfgNode, backbone):
    """Detectron2's ``build_proposal_generator`` on the backbone's output shape."""
    return build_proposal_generator(cfg, backbone.output_shape())


def ovrcnn_model(ovd: str = "${ovd}"):
    """The ``L(OVDetGeneralizedRCNN)(...)`` tree whose parts are built from the YAML node
    ``ovd`` (an
    interpolation to the config's ``ovd`` node by default)."""
    return L(OVDetGeneralizedRCNN)(
        backbone=L(build_backbone)(cfg=ovd),
        proposal_generator=L(BackbonePart)(build=proposal_generator_on_backbone, cfg=ovd),
        roi_heads=L(BackbonePart)(build=build_roi_heads_with_backbone, cfg=ovd),
        input_format=L(config_value)(cfg=ovd, key="INPUT.FORMAT"),
        vis_period=L(config_value)(cfg=ovd, key="VIS_PERIOD"),
        pixel_mean=L(config_value)(cfg=ovd, key="MODEL.PIXEL_MEAN"),
        pixel_std=L(config_value)(cfg=ovd, key="MODEL.PIXEL_STD"),
    )


def ovd_train_loader(cfg: CfgNode):
    """``OVDTrainer``'s train loader (``OVDDatasetMapper``, vocabulary checks, seeded sampler)."""
    from .engine.trainer import OVDTrainer

    return OVDTrainer.build_train_loader(cfg)


def ovd_test_loader(cfg: CfgNode, dataset_index: int = 0):
    """Detectron2's test loader of ``DATASETS.TEST[dataset_index]``."""
    return build_detection_test_loader(cfg, _test_dataset(cfg, dataset_index))


def ovd_evaluator(cfg: CfgNode, dataset_index: int = 0, output_dir: str = ""):
    """``OVDTrainer``'s evaluator (LVIS or OV-COCO, after the vocabulary check)."""
    from .engine.trainer import OVDTrainer

    name = _test_dataset(cfg, dataset_index)
    return OVDTrainer.build_evaluator(cfg, name, output_dir or None)


def ovd_optimizer(cfg: CfgNode, params=None):
    """The plugin's optimizer (``build_ovdet_optimizer``: SGD/AdamW, no decay on temperatures,
    layer-wise lr decay). ``params.model`` is the model, set by the training script as in
    Detectron2's ``lazyconfig_train_net.py`` (``cfg.optimizer.params.model = model``)."""
    from .engine.optimizer import build_ovdet_optimizer

    model = (params or {}).get("model")
    if model is None:
        raise ValueError(
            "optimizer.params.model is not set: set it to the model before instantiating the "
            "optimizer (cfg.optimizer.params.model = model), as lazyconfig_train_net.py does."
        )
    return build_ovdet_optimizer(cfg, model)


def ovd_lr_multiplier(cfg: CfgNode):
    """The ``SOLVER.*`` schedule (warm-up, steps or cosine) as the ``ParamScheduler`` that
    Detectron2's ``hooks.LRScheduler`` takes: Detectron2's own ``build_lr_scheduler``, asked on a
    placeholder optimizer, and its multiplier taken."""
    placeholder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return build_lr_scheduler(cfg, placeholder)._multiplier


def _test_dataset(cfg: CfgNode, index: int) -> str:
    if not 0 <= index < len(cfg.DATASETS.TEST):
        raise ValueError(
            f"dataset_index {index} is out of range for DATASETS.TEST {list(cfg.DATASETS.TEST)}: "
            "pick an index of a test dataset, or add one through ovd.opts."
        )
    return cfg.DATASETS.TEST[index]


def lazy_ovd_config(config_file: str, opts: Sequence = ()) -> dict:
    """Everything a lazy config file defines, for the YAML ``config_file``: ``ovd``, ``model``,
    ``dataloader``, ``optimizer``, ``lr_multiplier`` and ``train`` (values read from the YAML
    now, with ``opts``). A config file does ``globals().update(lazy_ovd_config(...))`` or
    spells the nodes out (``configs/lazy/*.py`` do the latter for the model)."""
    yaml_cfg = yaml_config(config_file, opts)
    s = yaml_cfg.SOLVER
    return {
        "ovd": L(yaml_config)(config_file=config_file, opts=list(opts)),
        "model": ovrcnn_model(),
        "dataloader": {
            "train": L(ovd_train_loader)(cfg="${ovd}"),
            "test": L(ovd_test_loader)(cfg="${ovd}", dataset_index=0),
            "evaluator": L(ovd_evaluator)(cfg="${ovd}", dataset_index=0),
        },
        "optimizer": L(ovd_optimizer)(cfg="${ovd}", params={"model": None}),
        "lr_multiplier": L(ovd_lr_multiplier)(cfg="${ovd}"),
        "train": {
            "output_dir": yaml_cfg.OUTPUT_DIR,
            "init_checkpoint": yaml_cfg.MODEL.WEIGHTS,
            "max_iter": s.MAX_ITER,
            "amp": {"enabled": s.AMP.ENABLED},
            "ddp": {"broadcast_buffers": False, "find_unused_parameters": False},
            "checkpointer": {"period": s.CHECKPOINT_PERIOD, "max_to_keep": 100},
            "eval_period": yaml_cfg.TEST.EVAL_PERIOD,
            "log_period": 20,
            "device": yaml_cfg.MODEL.DEVICE,
            "seed": yaml_cfg.SEED,
        },
    }
