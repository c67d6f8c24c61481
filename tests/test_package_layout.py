"""The installed package must work without the source tree (issue 12): nothing in ovdet_plugin/
runs a tool in a subprocess, calls git, finds the checkout through ``__file__`` or imports the
repository's ``tools``/``benchmarks``. ``tools/ci_wheel_smoke.sh`` checks a real non-editable
install; this test names the offending line at once."""

import ast
import os

from conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "ovdet_plugin")
# ``__file__`` is allowed where it reads the package's own data files (package_data in setup.py).
FILE_ALLOWED = {os.path.join("clip", "loading.py")}
FORBIDDEN_MODULES = {"subprocess", "benchmarks", "tools"}


def _offences(path: str, rel: str):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        for m in modules:
            if m.split(".")[0] in FORBIDDEN_MODULES:
                yield f"{rel}:{node.lineno} imports {m}"
        if isinstance(node, ast.Name) and node.id == "__file__" and rel not in FILE_ALLOWED:
            yield f"{rel}:{node.lineno} uses __file__"
        if isinstance(node, ast.Constant) and node.value == "git":
            yield f"{rel}:{node.lineno} calls git"


def test_package_needs_no_source_tree():
    found = []
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found += _offences(path, os.path.relpath(path, PACKAGE))
    assert not found, (
        "ovdet_plugin must run from a non-editable install; move code that needs the checkout "
        "to tools/ or benchmarks/ (see benchmarks/synthetic):\n" + "\n".join(found)
    )


def test_the_check_finds_an_offence(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import subprocess\nROOT = __file__\nsubprocess.run(['git', 'status'])\n"
        "from benchmarks.synthetic.pipeline import METHODS\n"
    )
    found = sorted(_offences(str(bad), "bad.py"))
    assert found == [
        "bad.py:1 imports subprocess",
        "bad.py:2 uses __file__",
        "bad.py:3 calls git",
        "bad.py:4 imports benchmarks.synthetic.pipeline",
    ], found
