"""``tools/install_env.sh`` checks the free disk space before it installs torch: a full disk gets
a message that names the need and the fix, before pip starts (pip stops midway with "[Errno 28]
No space left on device" otherwise)."""

import os
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "tools", "install_env.sh")


def _run(tmp_path, **env):
    venv = tmp_path / "venv"
    # A bare virtualenv without torch (and without pip: the script must stop before using it).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return subprocess.run(
        ["bash", SCRIPT],
        env={**os.environ, "VENV": str(venv), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_install_stops_with_a_clear_message_when_the_disk_is_too_full(tmp_path):
    # More than any disk has: the check must refuse before pip runs.
    result = _run(tmp_path, OVDET_INSTALL_NEED_GIB="1000000000")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not enough disk space" in result.stderr
    assert "GiB needed" in result.stderr and "VENV=" in result.stderr
    assert "[install] torch" not in result.stdout  # pip never started
    assert not (tmp_path / "venv" / ".ovdet-install-stamp").exists()


def test_disk_check_can_be_skipped(tmp_path):
    # Skipped, the script goes on to pip, which this bare virtualenv does not have: it fails
    # there, past the disk check.
    result = _run(tmp_path, OVDET_INSTALL_NEED_GIB="1000000000", OVDET_SKIP_DISK_CHECK="1")
    assert "not enough disk space" not in result.stderr
    assert "[install] torch" in result.stdout
    assert result.returncode != 0
