"""Training glue: the detection trainer (Detectron2's DefaultTrainer with the plugin's evaluators,
mapper and optimizer), the VLM pretraining loop (RO-ViT, CLIPSelf), the one optimizer builder and
the one setup every tool calls."""

from .launch_args import add_launch_arguments  # noqa: F401
from .optimizer import build_ovdet_optimizer  # noqa: F401
from .setup import check_ovdet_cfg, launch_main, setup_ovdet_cfg  # noqa: F401
from .trainer import OVDTrainer  # noqa: F401
