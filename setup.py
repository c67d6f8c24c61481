"""Install ovdet_plugin. detectron2 is not on PyPI and is therefore not listed in install_requires:
install it first (README "Installation"; `make install` does it for you)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="ovdet_plugin",
    version="0.1.0",
    description=(
        "Open-vocabulary object detection (ViLD, F-VLM, CLIPSelf/F-ViT, RO-ViT) "
        "as a Detectron2 plugin"
    ),
    long_description=(
        (here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else ""
    ),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ovdet_plugin", "ovdet_plugin.*"]),
    package_data={"ovdet_plugin": ["clip/model_configs/*.json"]},
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "open_clip_torch>=2.20",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "numpy",
        "tqdm",
        # The `lvis` import name: lvis 0.5.3 (PyPI) breaks LVISEval on numpy>=1.24; the pinned
        # constraints.txt installs visaionlvis 0.5.4 (upstream lvis-api master) instead.
        "visaionlvis",
    ],
    extras_require={"dev": ["pytest", "black", "ruff", "onnx", "onnxruntime"]},
)
