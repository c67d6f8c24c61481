"""The one setup of every tool: the config from ``--config-file``, the overrides and
``--register-dataset``, the checks that need no data or model, Detectron2's ``default_setup``, the
plugin's logger and the custom datasets' registration, in each ``launch`` worker.

``tools/train_net.py``, the offline steps and the pretraining tools (RO-ViT, CLIPSelf) all call
:func:`setup_ovdet_cfg`, so they check the same things the same way: a ``MODEL.DEVICE`` that does
not exist here (e.g. "cuda" on a machine without a GPU) is refused with a message that names the
fix, never silently replaced by the CPU.
"""

import torch.distributed as dist
from detectron2.engine import default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_ovdet_cfg, require_ovdet_config
from ..data.datasets.custom import merge_dataset_arguments, register_datasets_from_config
from .checks import check_device, check_writable_dir

__all__ = ["check_ovdet_cfg", "launch_main", "release_process_group", "setup_ovdet_cfg"]


def check_ovdet_cfg(cfg) -> None:
    """The checks that need no data or model: the config has the ovdet keys, ``MODEL.DEVICE``
    exists here, ``OUTPUT_DIR`` is writable (created if needed), a detector-only evaluation has
    a fusion to switch off. Raise with the fix."""
    require_ovdet_config(cfg, "OVDTrainer")
    if cfg.MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY and not cfg.MODEL.OVD.FUSION.RULE:
        raise ValueError(
            "MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY evaluates the detector without its fusion, but "
            "MODEL.OVD.FUSION.RULE is empty: every evaluation is detector-only already. Set a "
            "RULE or drop EVAL_DETECTOR_ONLY."
        )
    check_device(cfg.MODEL.DEVICE)
    check_writable_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")


def setup_ovdet_cfg(args):
    """``get_cfg`` + ``add_ovdet_config`` + the config file + command-line overrides (and the
    ``--register-dataset`` specs, appended to ``MODEL.OVD.CUSTOM_DATASETS``), then
    :func:`check_ovdet_cfg`, Detectron2's ``default_setup`` (logging, output folder, seed), then
    the registration of those datasets. Every tool calls it inside each ``launch`` worker, so
    the registrations exist in every process. Returns the frozen config."""
    cfg = merge_dataset_arguments(get_ovdet_cfg(args.config_file, args.opts), args)
    cfg.freeze()
    check_ovdet_cfg(cfg)  # before default_setup writes into OUTPUT_DIR
    default_setup(cfg, args)
    # the plugin's own INFO lines (CLIP weights loaded, datasets registered) on the console and
    # in OUTPUT_DIR/log.txt, like Detectron2's (default_setup sets up "detectron2" and "fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ovdet_plugin")
    register_datasets_from_config(cfg)
    return cfg


def launch_main(main, args) -> None:
    """Run ``main(args)`` through Detectron2's ``launch`` with the parsed ``--num-gpus``,
    ``--num-machines``, ``--machine-rank`` and ``--dist-url`` (DDP; gloo without a GPU)."""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def release_process_group() -> None:
    """The last call of a ``launch`` worker that finished: wait for every rank, then destroy the
    default process group. Detectron2's ``launch`` leaves it to interpreter exit, where a gloo
    worker can abort ("terminate called without an active exception": once in seven runs of
    the two-process CLIPSelf test). No-op without a process group. Nothing may use ``comm``
    after it (every rank would then call itself the main process)."""
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
