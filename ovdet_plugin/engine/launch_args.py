"""The multi-process flags of Detectron2's ``default_argument_parser`` for tools that have their
own parser (the offline steps: ViLD's crop-embedding precompute, the text-embedding dump)."""

__all__ = ["add_launch_arguments"]


def add_launch_arguments(parser):
    """Add ``--num-gpus``, ``--num-machines``, ``--machine-rank`` and ``--dist-url`` (the names and
    meanings of Detectron2's ``default_argument_parser``, read by ``launch_main``) to an
    ``argparse`` parser; returns it. Without a GPU, ``--num-gpus N`` starts N CPU processes
    (gloo)."""
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per machine (one per GPU)"
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL for torch.distributed; 'auto' picks a free local port (one "
        "machine only); several machines need tcp://HOST:PORT of machine 0",
    )
    return parser
