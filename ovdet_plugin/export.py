"""Export a trained open-vocabulary detector, its vocabulary baked in, to TorchScript (tracing
through Detectron2's ``TracingAdapter``) and ONNX, and check the exports against eager PyTorch.

What is exported is the model's inference without post-processing
(``model.inference(inputs, do_postprocess=False)``), as Detectron2's ``export_model.py`` does:

- input: one (3, H, W) float image in the model's input format, already resized by the test-time
  transform (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``); normalisation and padding are
  inside the export;
- outputs (flattened ``Instances``, in the order :attr:`ExportedDetector.output_names` gives):
  ``pred_boxes`` (N, 4) in input pixels, ``scores`` (N,), ``pred_classes`` (N,) indices into the
  baked vocabulary, and with masks ``pred_masks`` (N, 1, M, M) mask probabilities, not pasted.

**The vocabulary is baked in.** The text classifier's embeddings (and, for fused F-VLM / F-ViT /
RO-ViT, the VLM's base/novel mask) are traced as constants. A new vocabulary needs a new export;
``set_vocabulary`` on an exported model is impossible. The names are written next to the export
(``vocabulary.json``).

**Trace-time limits.** The traced graph keeps the Python control flow of the trace input: it takes
one image at a time. Image size and the numbers of proposals and detections stay dynamic, except
for CLIP ViT backbones (F-ViT, RO-ViT): their positional embedding is interpolated to the patch
grid with sizes the trace freezes, so their export needs a fixed padded input,
``MODEL.OVD.BACKBONE.SFP_SQUARE_PAD`` (ViTDet's square padding), and :func:`trace` refuses one
without it.

PyTorch's fused attention kernel (``aten::_native_multi_head_attention``, the fast path of
``nn.MultiheadAttention`` in open_clip's towers) has no ONNX form; the exports are traced with the
fast path off (:func:`mha_fast_path_off`), which computes the same attention.
"""

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.export import TracingAdapter
from torch import nn

__all__ = ["ExportedDetector", "compare_outputs", "export_onnx", "export_torchscript", "trace"]

logger = logging.getLogger(__name__)

#: ONNX opset: 16 has RoIAlign with the half-pixel shift (Detectron2's ROIAlignV2)
ONNX_OPSET = 17


@contextlib.contextmanager
def mha_fast_path_off():
    """``nn.MultiheadAttention`` without its fused kernel, which ONNX cannot express."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _check_fixed_grid(model: nn.Module) -> None:
    from .modeling.backbone.clip_vit import CLIPSimpleFeaturePyramid

    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, CLIPSimpleFeaturePyramid) and not backbone.padding_constraints.get(
        "square_size", 0
    ):
        raise ValueError(
            "A CLIP ViT backbone interpolates its positional embedding to each input's patch "
            "grid, and a trace freezes that grid at the trace input's size. Export it with a "
            "fixed padded input: set MODEL.OVD.BACKBONE.SFP_SQUARE_PAD to a multiple of "
            f"{backbone.size_divisibility} at least INPUT.MAX_SIZE_TEST (e.g. 1344 for 1333)."
        )


def _inference(model, inputs):
    return model.inference(inputs, do_postprocess=False)


@dataclass
class ExportedDetector:
    """The traced adapter and what describes it."""

    adapter: TracingAdapter
    output_names: List[str]
    class_names: List[str]

    @property
    def image(self) -> torch.Tensor:
        return self.adapter.flattened_inputs[0]


def trace(model: nn.Module, image: torch.Tensor) -> ExportedDetector:
    """Wrap ``model`` (eval mode, vocabulary set) in a ``TracingAdapter`` on a (3, H, W) image.

    Raises:
        ValueError: the model is in training mode, or the image is not (3, H, W).
    """
    if model.training:
        raise ValueError("Export traces inference: call model.eval() before exporting.")
    _check_fixed_grid(model)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"The trace input must be one (3, H, W) image, got shape {tuple(image.shape)}: pass "
            "an image resized by the test transform, channels first."
        )
    # eval: exporters restore the adapter's own mode on the model afterwards
    adapter = TracingAdapter(model, [{"image": image}], inference_func=_inference).eval()
    with torch.no_grad(), mha_fast_path_off():
        outputs = adapter(image)  # fills adapter.outputs_schema
    # one image's Instances: its fields (sorted, one tensor each), then the image size
    schema = adapter.outputs_schema.schemas[0]
    names = [*getattr(schema, "keys", []), "image_size"]
    if len(names) != len(outputs):  # a field of several tensors: number them
        names = [f"output_{i}" for i in range(len(outputs))]
    heads = getattr(model, "roi_heads", None)
    classifier = getattr(getattr(heads, "box_predictor", None), "text_classifier", None)
    vocab = getattr(classifier, "test_vocabulary", None)
    class_names = list(vocab.names) if vocab is not None else []
    return ExportedDetector(adapter, names, class_names)


def export_torchscript(exported: ExportedDetector, path: str) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the adapter, saved to ``path``."""
    with torch.no_grad(), mha_fast_path_off():
        traced = torch.jit.trace(exported.adapter, (exported.image,), check_trace=False)
    traced.save(path)
    logger.info("TorchScript model written to %s", path)
    return traced


def export_onnx(exported: ExportedDetector, path: str) -> None:
    """ONNX export (TorchScript-based exporter, opset :data:`ONNX_OPSET`) to ``path``."""
    with torch.no_grad(), mha_fast_path_off():
        torch.onnx.export(
            exported.adapter,
            (exported.image,),
            path,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=exported.output_names,
            dynamic_axes={"image": {1: "height", 2: "width"}},
        )
    logger.info("ONNX model written to %s", path)


def compare_outputs(
    reference: Sequence[torch.Tensor],
    outputs: Sequence,
    names: Sequence[str],
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> Dict[str, float]:
    """Check an export's ``outputs`` against eager ``reference``: same shapes, and per element
    |out - ref| <= atol + rtol |ref| (``numpy.allclose``). Returns the max |difference| per output.

    Raises:
        AssertionError: another number of outputs or detections, or a difference over tolerance.
    """
    if len(reference) != len(outputs):
        raise AssertionError(f"{len(outputs)} outputs, eager PyTorch gives {len(reference)}")
    diffs = {}
    for name, ref, out in zip(names, reference, outputs):
        ref = ref.detach().cpu().numpy().astype(np.float64)
        out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if ref.shape != out.shape:
            raise AssertionError(
                f"output {name}: shape {out.shape}, eager PyTorch gives {ref.shape}"
            )
        diff = np.abs(ref - out)
        diffs[name] = float(diff.max()) if ref.size else 0.0
        if not np.all(diff <= atol + rtol * np.abs(ref)):
            raise AssertionError(
                f"output {name}: max |export - eager| = {diffs[name]:.3g}, over the tolerance "
                f"{atol} + {rtol} x |eager|"
            )
    return diffs


def run_onnx(path: str, image: torch.Tensor) -> List[np.ndarray]:
    """Run an exported ONNX model with ONNX Runtime (CPU) on a (3, H, W) image."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "Checking an ONNX export needs onnxruntime: pip install -c constraints.txt "
            "onnxruntime (it is in the dev extras: pip install -e '.[dev]')."
        ) from e
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: image.cpu().numpy()})


def write_vocabulary(exported: ExportedDetector, folder: str) -> str:
    """``folder/vocabulary.json``: the baked class names (index = ``pred_classes``)."""
    path = os.path.join(folder, "vocabulary.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"classes": exported.class_names, "outputs": exported.output_names}, f, indent=1)
    return path
