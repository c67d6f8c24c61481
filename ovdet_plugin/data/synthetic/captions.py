"""Captions that vary: counts, colours, sizes, positions, relations and wording.

Every caption names every category in its image (singular or plural name), which the tests
check. Varying the wording matters: ENVIRONMENT.md records that one fixed caption per category,
repeated inside a batch, stalls a softmax contrastive loss (duplicates are false negatives).
"""

from collections import OrderedDict
from typing import List, Sequence

import numpy as np

from .render import PlacedObject

__all__ = ["make_captions", "position_phrase", "mentions"]

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
OPENINGS = (
    "{}.",
    "a picture of {}.",
    "a photo of {}.",
    "an image showing {}.",
    "we can see {}.",
    "this drawing has {}.",
    "a cartoon of {}.",
    "{} on a colorful background.",
    "an illustration with {}.",
    "look: {}!",
)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def position_phrase(obj: PlacedObject, width: int, height: int) -> str:
    """Where the object's centre lies on a 3 x 3 grid: "at the top left", "in the middle"."""
    col = min(2, max(0, int(3 * obj.center[0] / width)))
    row = min(2, max(0, int(3 * obj.center[1] / height)))
    vertical, horizontal = ("top", "", "bottom")[row], ("left", "", "right")[col]
    if not vertical and not horizontal:
        return "in the middle"
    if not vertical:
        return f"on the {horizontal}"
    return f"at the {vertical} {horizontal}".rstrip()


def _size_word(obj: PlacedObject, side: int) -> str:
    rel = obj.size / side
    return "small " if rel < 0.24 else "big " if rel > 0.42 else ""


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _counted(name: str, plural: str, n: int, rng) -> str:
    if n == 1:
        return _article(name) if rng.random() < 0.85 else "one " + name
    return f"{NUMBERS.get(n, str(n))} {plural}" if rng.random() < 0.8 else f"some {plural}"


def _describe(obj: PlacedObject, w: int, h: int, rng, color=True, size=True, where=True) -> str:
    words = (_size_word(obj, min(w, h)) if size else "") + (
        obj.color_name + " " if color and obj.color_name != "inverse" else ""
    )
    text = _article(words + obj.kind.name)
    if where:
        text += " " + position_phrase(obj, w, h)
    return text


def make_captions(
    objects: Sequence[PlacedObject], width: int, height: int, rng: np.random.Generator, n: int = 4
) -> List[str]:
    """``n`` different captions of one image (the first is the most detailed at random)."""
    groups = OrderedDict()
    for o in objects:
        groups.setdefault(o.kind.name, []).append(o)
    styles = ["counts", "attributes", "positions", "relation", "mixed"]
    captions: List[str] = []
    for attempt in range(4 * n):
        style = styles[int(rng.integers(len(styles)))]
        order = list(groups)
        rng.shuffle(order)
        if style == "counts":
            body = _join(_counted(k, groups[k][0].kind.plural, len(groups[k]), rng) for k in order)
        elif style == "relation" and len(objects) >= 2:
            a, b = rng.choice(len(objects), 2, replace=False)
            oa, ob = objects[int(a)], objects[int(b)]
            dx, dy = ob.center[0] - oa.center[0], ob.center[1] - oa.center[1]
            rel = (
                ("to the left of" if dx > 0 else "to the right of")
                if abs(dx) > abs(dy)
                else ("above" if dy > 0 else "below")
            )
            first = f"{_describe(oa, width, height, rng, where=False)} {rel} "
            first += _describe(ob, width, height, rng, where=False)
            rest = [k for k in order if k not in (oa.kind.name, ob.kind.name)]
            tail = [_counted(k, groups[k][0].kind.plural, len(groups[k]), rng) for k in rest]
            body = first + (", with " + _join(tail) if tail else "")
        else:
            parts = []
            for k in order:
                objs = groups[k]
                if style == "mixed" and len(objs) > 1 and rng.random() < 0.5:
                    parts.append(_counted(k, objs[0].kind.plural, len(objs), rng))
                    continue
                for o in objs:
                    parts.append(
                        _describe(
                            o,
                            width,
                            height,
                            rng,
                            color=style != "positions" or rng.random() < 0.5,
                            size=rng.random() < 0.5,
                            where=style != "attributes" or rng.random() < 0.3,
                        )
                    )
            body = _join(parts)
        text = OPENINGS[int(rng.integers(len(OPENINGS)))].format(body)
        if text not in captions:
            captions.append(text)
        if len(captions) == n:
            break
    return captions


def mentions(caption: str, name: str, plural: str) -> bool:
    """Whether ``caption`` names the category (as a whole word or phrase, singular or plural)."""
    import re

    return any(re.search(rf"\b{re.escape(w)}\b", caption) for w in (name, plural))
