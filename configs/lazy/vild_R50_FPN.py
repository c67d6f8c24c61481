"""LazyConfig of lvis/vild_R50_FPN.yaml (the same model, built by the same classes).

ViLD (text + image distillation), R50-FPN trained from scratch.

The recipe's numbers live in the YAML: change them with ``ovd.opts`` (KEY VALUE pairs), e.g.
    python tools/lazyconfig_train_net.py --config-file configs/lazy/vild_R50_FPN.py \\
        'ovd.opts=["MODEL.OVD.CLIP.PRETRAINED","/path/weights.pt"]'
Replace a part with your own node (``model.backbone = L(MyBackbone)(...)``); see
ovdet_plugin/lazy.py for the design.
"""

import os

from detectron2.config import LazyCall as L
from detectron2.modeling import build_backbone

from ovdet_plugin.lazy import config_value, lazy_ovd_config, proposal_generator_on_backbone
from ovdet_plugin.modeling.meta_arch import BackbonePart, OVDetGeneralizedRCNN
from ovdet_plugin.modeling.roi_heads.ov_roi_heads import build_roi_heads_with_backbone

# the paper YAML beside this folder (LazyConfig.load defines __file__)
_all = lazy_ovd_config(os.path.join(os.path.dirname(__file__), "..", "lvis", "vild_R50_FPN.yaml"))
ovd = _all["ovd"]  # the YAML config the parts are built from
dataloader = _all["dataloader"]
optimizer = _all["optimizer"]
lr_multiplier = _all["lr_multiplier"]
train = _all["train"]

model = L(OVDetGeneralizedRCNN)(
    backbone=L(build_backbone)(cfg="${ovd}"),
    proposal_generator=L(BackbonePart)(build=proposal_generator_on_backbone, cfg="${ovd}"),
    # built by OVDetGeneralizedRCNN with its backbone: the VLM scorer shares the frozen CLIP tower
    roi_heads=L(BackbonePart)(build=build_roi_heads_with_backbone, cfg="${ovd}"),
    input_format=L(config_value)(cfg="${ovd}", key="INPUT.FORMAT"),
    vis_period=L(config_value)(cfg="${ovd}", key="VIS_PERIOD"),
    pixel_mean=L(config_value)(cfg="${ovd}", key="MODEL.PIXEL_MEAN"),
    pixel_std=L(config_value)(cfg="${ovd}", key="MODEL.PIXEL_STD"),
)
