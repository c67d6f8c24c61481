"""The model tree every ovdet LazyConfig shares: an ``OVDetGeneralizedRCNN`` whose parts are
built, by the same builders as the YAML path, from the config node ``ovd`` that each config
defines (its paper YAML). Import it in a config with ``from .common import model``."""

from detectron2.config import LazyCall as L
from detectron2.modeling import build_backbone

from ovdet_plugin.lazy import config_value, proposal_generator_on_backbone
from ovdet_plugin.modeling.meta_arch import BackbonePart, OVDetGeneralizedRCNN
from ovdet_plugin.modeling.roi_heads.ov_roi_heads import build_roi_heads_with_backbone

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
