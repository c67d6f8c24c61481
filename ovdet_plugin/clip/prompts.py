"""Prompt templates and class-name normalisation for text classifiers.

- ViLD (methods §1.2): 63 templates with an "{article}" slot; names normalised ("_" -> " ",
  "/" -> " or ", lower-cased, trailing "." stripped); prompts starting with "a"/"the" get the prefix
  "This is ". Source: ViLD's demo notebook (tensorflow/tpu projects/vild), also reproduced in
  wusize/CLIPSelf F-ViT/tools/clip_utils.py.
- CLIP's 80 ImageNet templates (F-VLM, methods §2.2): taken from open_clip
  (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``), not re-typed here.
"""

from typing import Callable, List

__all__ = [
    "PROMPT_SETS",
    "VILD_TEMPLATES",
    "build_prompts",
    "normalize_class_name",
    "prompt_set_names",
]

# ViLD's prompt-engineering templates (63). "{article}" becomes "a"/"an".
VILD_TEMPLATES: List[str] = [
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
]


def normalize_class_name(name: str) -> str:
    """ViLD's name processing: "_" -> " ", "/" -> " or ", lower-case, strip a trailing ".".

    Surrounding white space is stripped and inner runs of spaces are folded as well, so that
    "remote_control" and " Remote  control " give the same prompt.
    """
    text = name.replace("_", " ").replace("/", " or ").lower()
    text = " ".join(text.split())
    return text.rstrip(".").strip()


def _article(name: str) -> str:
    """ViLD's article rule: "an" before a vowel letter, else "a"."""
    return "an" if name[:1] in "aeiou" else "a"


def _vild_prompts(name: str) -> List[str]:
    texts = [t.format(name, article=_article(name)) for t in VILD_TEMPLATES]
    # ViLD's "this_is" flag: the check is a plain string prefix test on "a"/"the", as in ViLD.
    return ["This is " + t if t.startswith("a") or t.startswith("the") else t for t in texts]


def _clip_prompts(name: str) -> List[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template(name) for template in OPENAI_IMAGENET_TEMPLATES]


PROMPT_SETS: dict = {"vild": _vild_prompts, "clip": _clip_prompts}


def prompt_set_names() -> List[str]:
    return sorted(PROMPT_SETS) + ["single"]


def build_prompts(name: str, prompt_set: str, single_prompt: str = "a photo of a {}.") -> List[str]:
    """All prompts for one (already normalised) class name.

    Args:
        name: a class name as returned by :func:`normalize_class_name`.
        prompt_set: "vild", "clip" or "single".
        single_prompt: the template for "single"; must contain "{}".
    Returns:
        list of prompt strings (63 for "vild", 80 for "clip", 1 for "single").
    """
    if prompt_set == "single":
        if "{}" not in single_prompt:
            raise ValueError(
                f"MODEL.OVD.TEXT.SINGLE_PROMPT must contain '{{}}' where the class name goes, "
                f"got {single_prompt!r}"
            )
        return [single_prompt.format(name)]
    builder: Callable[[str], List[str]] = PROMPT_SETS.get(prompt_set)
    if builder is None:
        raise ValueError(
            f"Unknown prompt set {prompt_set!r} (MODEL.OVD.TEXT.PROMPTS); "
            f"choose one of {prompt_set_names()}"
        )
    return builder(name)
