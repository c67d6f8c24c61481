#!/usr/bin/env python
"""CLIPSelf self-distillation of a CLIP ViT's dense features (image patches or proposals).

    python tools/train_clipself.py --config-file configs/pretraining/clipself_vit_b16_coco.yaml \
        --num-gpus 8 [--resume] [KEY VALUE ...]

Output: OUTPUT_DIR/model_*.pth (resumable checkpoints) and clipself_final.pt, the
student-teacher ensemble as an open_clip state dict; use it as the F-ViT backbone with
MODEL.OVD.BACKBONE.PRETRAINED: OUTPUT_DIR/clipself_final.pt.
"""

from ovdet_plugin.engine import launch_main
from ovdet_plugin.engine.pretrain import argument_parser, clipself_main

if __name__ == "__main__":
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    launch_main(clipself_main, args)
