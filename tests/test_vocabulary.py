"""Vocabularies: built-ins without downloads, custom strings and files, base/novel flags from
metadata, and the errors for empty, duplicate and empty-after-normalisation names."""

import json

import pytest

from ovdet_plugin.vocabulary import COCO_OV_BASE, COCO_OV_NOVEL, Vocabulary, load_vocabulary


def test_lvis_builtin_from_detectron2_metadata():
    v = load_vocabulary("lvis")
    assert len(v) == 1203
    assert v.frequency.count("r") == 337 and sum(v.novel_mask) == 337
    assert sum(v.base_mask) == 866  # frequent + common
    assert all(s == "novel" for s, f in zip(v.splits, v.frequency) if f == "r")
    assert v.names[0] == "aerosol_can" and v.synonyms[0] == ("aerosol_can", "spray_can")


def test_coco_builtins_carry_the_ov_split():
    v = load_vocabulary("coco")
    assert len(v) == 80
    assert sum(v.base_mask) == len(COCO_OV_BASE) == 48
    assert sum(v.novel_mask) == len(COCO_OV_NOVEL) == 17
    assert v.splits[v.names.index("cat")] == "novel"
    assert v.splits[v.names.index("person")] == "base"
    assert v.splits[v.names.index("traffic light")] == "unused"
    ov = load_vocabulary("coco_ov")
    assert len(ov) == 65 and "traffic light" not in ov.names
    assert [n for n in v.names if n in ov.names] == list(ov.names)  # COCO order kept


def test_custom_string_is_all_novel():
    v = load_vocabulary(" cat, remote control ,sofa ")
    assert v.names == ("cat", "remote control", "sofa")
    assert v.splits == ("novel",) * 3


def test_from_names_with_base_flags():
    v = Vocabulary.from_names(["cat", "dog", "sofa"], base=["dog"])
    assert v.splits == ("novel", "base", "novel")
    with pytest.raises(ValueError, match="Base classes not in the vocabulary.*'zebra'"):
        Vocabulary.from_names(["cat"], base=["zebra"])


def test_txt_file_with_synonyms_and_comments(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# my classes\ncat\nsofa | couch   # merged synonyms\n\nremote_control\n")
    v = load_vocabulary(str(path))
    assert v.names == ("cat", "sofa", "remote_control")
    assert v.synonyms[1] == ("sofa", "couch")
    assert v.normalized_names == ["cat", "sofa", "remote control"]


def test_json_file_with_categories(tmp_path):
    cats = [
        {"id": 2, "name": "dog", "frequency": "r", "synonyms": ["dog", "doggy"]},
        {"id": 1, "name": "cat", "frequency": "f"},
        {"id": 3, "name": "sofa", "split": "base"},
    ]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    v = load_vocabulary(str(path))
    assert v.names == ("cat", "dog", "sofa")  # category-id order
    assert v.splits == ("base", "novel", "base")
    assert v.frequency == ("f", "r", "")
    assert v.synonyms[1] == ("dog", "doggy")


@pytest.mark.parametrize("spec", ["", "  ", ",", []])
def test_empty_vocabulary_is_an_error(spec):
    with pytest.raises(ValueError, match="Empty vocabulary|empty entries"):
        load_vocabulary(spec)


def test_empty_entries_are_an_error():
    with pytest.raises(ValueError, match="empty entries at positions \\[1\\]"):
        load_vocabulary("cat,,dog")


def test_duplicates_are_listed():
    with pytest.raises(ValueError, match=r"Duplicate class names.*\['Cat', 'remote control'\]"):
        load_vocabulary("cat, Cat, remote_control, dog, remote control")


def test_names_that_normalise_to_nothing():
    with pytest.raises(ValueError, match=r"normalise to nothing.*'___'"):
        load_vocabulary("cat, ___")


def test_missing_vocabulary_file():
    with pytest.raises(FileNotFoundError, match="does not exist.*built-in name"):
        load_vocabulary("/no/such/vocabulary.txt")


def test_subset_keeps_flags():
    v = load_vocabulary("lvis")
    rare = v.subset(v.novel_mask)
    assert len(rare) == 337 and set(rare.frequency) == {"r"}
