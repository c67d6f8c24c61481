#!/usr/bin/env python
"""RO-ViT image-text pretraining (cropped positional embedding, focal contrastive loss).

    python tools/pretrain_rovit.py --config-file configs/pretraining/rovit_pretrain_vit_b16.yaml \
        --num-gpus 8 [--resume] [KEY VALUE ...]

Multi-node: add --num-machines N --machine-rank R --dist-url tcp://HOST:PORT. Without a GPU the
processes use gloo on the CPU. Output: OUTPUT_DIR/model_*.pth (resumable checkpoints),
rovit_clip_final.pt (the open_clip state dict), metrics.json, tensorboard events.
"""

from ovdet_plugin.engine import launch_main
from ovdet_plugin.engine.pretrain import argument_parser, rovit_main

if __name__ == "__main__":
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    launch_main(rovit_main, args)
