"""Tests and the commands they run write only to temporary folders and gitignored paths (runs/, data/, caches),
never into tracked files or tests/assets: after the whole session, `git status` is what it was when the session
was collected. The check runs when the session ends (a session fixture's teardown, after the last test), so it
sees every test of the run; a difference is reported as an error at that teardown, naming the paths."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tree_state(repo: Path) -> dict[str, str]:
    """{path: status and content hash} of every tracked change and every untracked, not ignored, file."""
    lines = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "-z"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    state = {}
    for line in filter(None, lines):
        path = repo / line[3:]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "-"
        state[line[3:]] = f"{line[:2]} {digest}"
    return state


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{p}: {before.get(p, 'clean')} -> {after.get(p, 'clean')}" for p in sorted(set(before) | set(after))
            if before.get(p) != after.get(p)]


HAVE_GIT = shutil.which("git") is not None and (REPO / ".git").exists()
AT_COLLECTION = tree_state(REPO) if HAVE_GIT else {}  # taken before any test runs


@pytest.fixture(scope="session")
def tree_unchanged_at_session_end():
    yield
    changed = differences(AT_COLLECTION, tree_state(REPO))
    assert not changed, ("tests wrote into the repository (write under tmp_path, or into a gitignored folder):\n  "
                         + "\n  ".join(changed))


@pytest.mark.skipif(not HAVE_GIT, reason="not a git checkout")
def test_the_repository_is_unchanged_when_the_session_ends(tree_unchanged_at_session_end, tmp_path):
    # the check itself, on a scratch repository: a new file, a changed tracked file and an ignored file
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/runs/\n")
    (tmp_path / "tracked.txt").write_text("a\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    before = tree_state(tmp_path)
    assert before == {}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ignored.json").write_text("{}")
    assert differences(before, tree_state(tmp_path)) == []
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "new.json").write_text("{}")
    (tmp_path / "tracked.txt").write_text("b\n")
    changed = differences(before, tree_state(tmp_path))
    assert [c.split(":")[0] for c in changed] == ["assets/new.json", "tracked.txt"]
