"""LazyConfig of lvis/vild_R50_FPN.yaml (the same model, built by the same classes).

ViLD (text + image distillation), R50-FPN trained from scratch.

The recipe's numbers live in the YAML: change them with ``ovd.opts`` (KEY VALUE pairs), e.g.
    python tools/lazyconfig_train_net.py --config-file configs/lazy/vild_R50_FPN.py \\
        'ovd.opts=["MODEL.OVD.CLIP.PRETRAINED","/path/weights.pt"]'
Replace a part with your own node (``model.backbone = L(MyBackbone)(...)``); see
ovdet_plugin/lazy.py for the design.
"""

import os

from ovdet_plugin.lazy import lazy_ovd_config

from .common import model  # noqa: F401  (the OVDetGeneralizedRCNN tree, built from ``ovd``)

# the paper YAML beside this folder (LazyConfig.load defines __file__)
_all = lazy_ovd_config(os.path.join(os.path.dirname(__file__), "..", "lvis", "vild_R50_FPN.yaml"))
ovd = _all["ovd"]  # the YAML config the parts are built from
dataloader = _all["dataloader"]
optimizer = _all["optimizer"]
lr_multiplier = _all["lr_multiplier"]
train = _all["train"]
