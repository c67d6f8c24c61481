"""LazyConfig of lvis/fvit_B16_clipself.yaml (the same model, built by the same classes).

F-ViT + CLIPSelf: frozen CLIP ViT-B/16 (CLIPSelf weights via ovd.opts
MODEL.OVD.CLIP.PRETRAINED), blocks 3/5/7/11 into a simple feature pyramid (ViTDet style), dense
VLM score on the backbone's own map, fvit fusion.

The recipe's numbers live in the YAML: change them with ``ovd.opts`` (KEY VALUE pairs), e.g.
    python tools/lazyconfig_train_net.py --config-file configs/lazy/fvit_B16_clipself.py \\
        'ovd.opts=["MODEL.OVD.CLIP.PRETRAINED","/path/weights.pt"]'
Replace a part with your own node (``model.backbone = L(MyBackbone)(...)``); see
ovdet_plugin/lazy.py for the design.
"""

import os

from ovdet_plugin.lazy import lazy_ovd_config

from .common import model  # noqa: F401  (the OVDetGeneralizedRCNN tree, built from ``ovd``)

# the paper YAML beside this folder (LazyConfig.load defines __file__)
_all = lazy_ovd_config(
    os.path.join(os.path.dirname(__file__), "..", "lvis", "fvit_B16_clipself.yaml")
)
ovd = _all["ovd"]  # the YAML config the parts are built from
dataloader = _all["dataloader"]
optimizer = _all["optimizer"]
lr_multiplier = _all["lr_multiplier"]
train = _all["train"]
