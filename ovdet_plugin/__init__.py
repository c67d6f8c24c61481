"""ovdet_plugin: open-vocabulary object detection recipes (ViLD, F-VLM, CLIPSelf/F-ViT, RO-ViT)
as a Detectron2 plugin.

Usage in any Detectron2 project::

    import ovdet_plugin                      # registers every component (explicit imports below)
    from detectron2.config import get_cfg
    cfg = get_cfg()
    ovdet_plugin.add_ovdet_config(cfg)       # adds the MODEL.OVD.* keys
    cfg.merge_from_file("configs/....yaml")
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "ovdet_plugin needs detectron2, which is not published on PyPI, so `pip install` cannot "
        "pull it in. Install it first, then retry:\n"
        "  - from this repository: `make install` (or `bash tools/install_env.sh`), which installs "
        "a pure-Python detectron2 from the package registry;\n"
        "  - with internet and a compiler: pip install --no-build-isolation "
        "'git+https://github.com/facebookresearch/detectron2.git'.\n"
        "See README.md, section 'Installation'."
    ) from e

# Registration-only imports: importing these modules runs their registry decorators.
from . import clip as _clip  # noqa: E402,F401  (adds the tiny open_clip model configs)
from . import data as _data  # noqa: E402,F401
from .config import add_ovdet_config, get_ovdet_cfg  # noqa: E402
from .modeling import backbone as _backbone  # noqa: E402,F401
from .modeling import meta_arch as _meta_arch  # noqa: E402,F401
from .modeling import proposal_generator as _proposal_generator  # noqa: E402,F401
from .modeling import roi_heads as _roi_heads  # noqa: E402,F401
from .modeling import vlm_scorers as _vlm_scorers  # noqa: E402,F401
from .modeling.vocabulary_swap import keep_text_encoder, set_vocabulary  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "add_ovdet_config",
    "get_ovdet_cfg",
    "keep_text_encoder",
    "set_vocabulary",
    "__version__",
]
