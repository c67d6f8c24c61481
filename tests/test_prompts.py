"""Prompt sets and name normalisation (ViLD, methods §1.2; CLIP's 80 templates, methods §2.2)."""

import pytest

from ovdet_plugin.clip.prompts import VILD_TEMPLATES, build_prompts, normalize_class_name


def test_vild_name_normalisation():
    assert normalize_class_name("remote_control") == "remote control"
    assert normalize_class_name("Bow_(weapon)") == "bow (weapon)"
    assert normalize_class_name("salad_plate/salad_bowl") == "salad plate or salad bowl"
    assert normalize_class_name("st._bernard.") == "st. bernard"
    assert normalize_class_name("  Sofa  ") == "sofa"
    assert normalize_class_name("_._") == ""


def test_vild_prompts():
    prompts = build_prompts("apple", "vild")
    assert len(VILD_TEMPLATES) == len(prompts) == 63
    assert prompts[0] == "There is an apple in the scene."  # article "an" before a vowel
    assert "This is a photo of an apple in the scene." in prompts  # "This is " prefix
    assert "itap of my apple." in prompts  # no prefix: does not start with "a"/"the"
    assert "This is the plastic apple." in prompts
    assert build_prompts("cat", "vild")[0] == "There is a cat in the scene."


def test_clip_prompts_come_from_open_clip():
    prompts = build_prompts("cat", "clip")
    assert len(prompts) == 80
    assert "a photo of a cat." in prompts and "a bad photo of a cat." in prompts


def test_single_prompt():
    assert build_prompts("cat", "single", "a {} in a box") == ["a cat in a box"]
    with pytest.raises(ValueError, match="must contain"):
        build_prompts("cat", "single", "no placeholder")


def test_unknown_prompt_set():
    with pytest.raises(ValueError, match=r"Unknown prompt set 'vlid'.*'vild'"):
        build_prompts("cat", "vlid")
