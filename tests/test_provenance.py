"""Provenance names the commit and, when the tree was modified, which tracked files differed."""

import shutil
import subprocess

import pytest

from balanced_vae.provenance import git_dirty, git_dirty_files, provenance, short_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_dirty_files_are_the_modified_tracked_files_only(tmp_path):
    _git(tmp_path, "init", "-q")
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text("x = 1\n")
    _git(tmp_path, "add", "a.py", "b.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_dirty_files(tmp_path) == [] and git_dirty(tmp_path) is False
    (tmp_path / "untracked.json").write_text("{}")  # outputs beside the code do not count
    assert git_dirty(tmp_path) is False
    (tmp_path / "b.py").write_text("x = 2\n")
    assert git_dirty_files(tmp_path) == [" M b.py"] and git_dirty(tmp_path) is True


def test_outside_a_git_tree_dirtiness_is_unknown(tmp_path):
    assert git_dirty_files(tmp_path) is None and git_dirty(tmp_path) is None


def test_a_record_lists_what_differed_only_when_dirty():
    prov = provenance()
    assert ("git_dirty_files" in prov) == bool(prov["git_dirty"])
    assert short_commit(prov).endswith("+dirty") == bool(prov["git_dirty"])
