"""docs/config_audit.md pins the effective values of the paper configs: every "effective" cell
of its tables must equal the value the config loads with (Detectron2 defaults + _BASE_ chain +
file), so neither the YAMLs nor the audit can drift silently."""

import ast
import os
import re

import pytest
from conftest import REPO_ROOT

from ovdet_plugin import get_ovdet_cfg

AUDIT = os.path.join(REPO_ROOT, "docs", "config_audit.md")


def audit_rows():
    """(config path, key, effective cell) for every table row of the audit."""
    rows, config = [], None
    with open(AUDIT) as f:
        for line in f:
            heading = re.match(r"^## (configs/\S+\.yaml)", line)
            if heading:
                config = heading.group(1)
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if config and len(cells) == 4 and cells[0].startswith(("MODEL.", "SOLVER.", "TEST.")):
                rows.append((config, cells[0], cells[1]))
    return rows


ROWS = audit_rows()


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _parse(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string such as "official"


def test_the_audit_covers_every_paper_config():
    configs = {c for c, _, _ in ROWS}
    for folder in ("lvis", "coco"):
        for name in os.listdir(os.path.join(REPO_ROOT, "configs", folder)):
            if name.endswith(".yaml") and not name.startswith("Base"):
                assert f"configs/{folder}/{name}" in configs, f"{folder}/{name} is not audited"
    assert len(ROWS) > 100


@pytest.mark.parametrize("config", sorted({c for c, _, _ in ROWS}))
def test_effective_values_match_the_audit(config):
    cfg = get_ovdet_cfg(os.path.join(REPO_ROOT, config))
    for _, key, cell in (r for r in ROWS if r[0] == config):
        got, want = _value(cfg, key), _parse(cell)
        if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
            got, want = list(map(_listify, got)), list(map(_listify, want))
        assert got == want, f"{config}: {key} is {got!r}, docs/config_audit.md says {cell}"


def _listify(x):
    return list(x) if isinstance(x, (list, tuple)) else x
