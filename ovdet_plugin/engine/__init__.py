"""Training glue: Detectron2's DefaultTrainer with the plugin's evaluators, mapper and optimizer."""

from .launch_args import add_launch_arguments  # noqa: F401
from .trainer import OVDTrainer, build_ovdet_optimizer, launch_main, setup_ovdet_cfg  # noqa: F401
