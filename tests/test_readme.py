"""The README's file list matches the repository: every tracked file is listed (itself or its folder), and every
listed path exists. Also: the README's two commands are make targets."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def listed() -> list[str]:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Files\n.*?```text\n(.*?)```", text, re.DOTALL | re.MULTILINE)
    assert m, "README.md has no '## Files' section with a ```text block"
    return [line.split()[0] for line in m.group(1).splitlines() if line.strip()]


def tracked() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).exists()]  # a deletion not yet committed is not listed


def test_every_listed_path_exists():
    missing = [p for p in listed() if not (REPO / p).exists()]
    assert not missing, f"README.md lists paths that do not exist: {missing}"


def test_every_tracked_file_is_listed():
    entries = listed()
    files, folders = set(entries), tuple(p for p in entries if p.endswith("/"))
    unlisted = [f for f in tracked() if f not in files and not f.startswith(folders)]
    assert not unlisted, f"add these to the file list in README.md (## Files): {unlisted}"


def test_readme_commands_are_make_targets():
    text = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for target in sorted(set(re.findall(r"^make ([a-z-]+)", text, re.MULTILINE))):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"README: `make {target}`, no such target"


@pytest.mark.parametrize("method, label", [("eaft", "EAFT"), ("eaft_sig", "EAFT-sigmoid"), ("mile", "MiLe"),
                                           ("sft_kl", "SFT-KL"), ("flow", "FLOW")])
def test_readme_full_demo_rows_are_the_committed_report(method, label):
    """The README's table of the full demo quotes results/demo/full/table.md (written by `make demo FULL=1`), not
    numbers typed by hand: each method's row has the same seeds and differences as the report's row."""
    report = (REPO / "results/demo/full/table.md").read_text()
    row = re.search(rf"^\| {method} \| (\d+) \| ([^|]+) \| [^|]+ \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", report,
                    re.MULTILINE)
    assert row, f"results/demo/full/table.md has no '{method}' row against SFT"
    seeds, nll, mini, kl, base_nll = (c.strip().rstrip("*").replace("-", "−") for c in row.groups())
    readme = (REPO / "README.md").read_text()
    expected = f"| {label} | {seeds} | {nll} | {kl} | {base_nll} | {mini} |"
    assert expected in readme, f"README.md's full-demo row for {label} should read: {expected}"
