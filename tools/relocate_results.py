"""Rewrite the absolute paths that files under results/ record as repository-relative ones, and check for any left.

    python tools/relocate_results.py --old-root /work/main    # the checkout the files were written in
    python tools/relocate_results.py --check                  # only list the files that hold an absolute path

A maintenance tool (tools/), not a stage of the pipeline.

The writers record paths relative to the repository root (common.files.repo_relative); files written
before they did held the absolute paths of the machine that made them. A path under an --old-root (default: this
checkout) is rewritten relative to that root: in text files (JSON, JSONL, YAML, Markdown, CSV, TeX) where the path
starts a value (after a quote, a space, a backtick, `=` or at the start of a line), and in the JSON metadata of the
token-statistics parquet files. Everything else in a file is left byte for byte, and a second run finds nothing
to do. The files are those git would commit: tracked, or untracked and not ignored.

Exit status 1 when an absolute path is left anywhere (listed with its file and line), so the check also guards a
commit. URLs (https://host/a/b) and relative paths (./data/x, runs/x) are not absolute paths.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from common.files import REPO, atomic_path, atomic_write_text

# A "/" that starts a token (not inside a word, a relative path or a URL: "://" has ":" before it), then at least
# two names: /home/u, /tmp/x/y, /work/main/results. "~/x" is the user's home, machine-specific as well.
ABSOLUTE = re.compile(r"(?<![\w.~/\\:-])/(?:[\w.+-]+/)+[\w.+-]*|(?<![\w.~/-])~/[\w.+-]+")
# Binary files (figures) hold compressed streams, where any two names between slashes turn up by chance: there
# only the usual roots of home and scratch folders count, and this checkout's own path.
ABSOLUTE_BYTES = re.compile(rb"(?<![\w.~/-])/(?:home|root|tmp|Users|work|scratch|private|mnt|data|var/folders)/")
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".tex", ".txt"}


def results_files(folder: Path = REPO / "results") -> list[Path]:
    """The files under `folder` that git would commit; every file when `folder` is not in a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                              "."], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in folder.rglob("*") if p.is_file())
    return sorted({folder / name for name in out.decode().split("\0") if name and (folder / name).is_file()})


def _decoded(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None


def parquet_metadata(path: Path) -> dict[bytes, bytes]:
    import pyarrow.parquet as pq

    return dict(pq.read_schema(path).metadata or {})


def absolute_paths(path: Path) -> list[str]:
    """Where the file records an absolute path: "line N: /the/path" (text), "metadata KEY: ..." (parquet),
    "byte N: ..." (other binary files). Empty when there is none."""
    text = _decoded(path)
    if text is not None:
        return [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group()}" for m in ABSOLUTE.finditer(text)]
    found = []
    if path.suffix == ".parquet":
        for key, value in parquet_metadata(path).items():
            found += [f"metadata {key.decode()}: {m.group()}" for m in ABSOLUTE.finditer(value.decode("utf-8", "replace"))]
    data = path.read_bytes()
    found += [f"byte {m.start()}: {m.group().decode('latin-1')}" for m in ABSOLUTE_BYTES.finditer(data)]
    found += [f"byte {m.start()}: {REPO}" for m in re.finditer(re.escape(bytes(REPO)), data)]
    return found


def relocate_text(text: str, roots: list[str]) -> str:
    """`text` with every path under one of `roots` made relative to it (the root itself becomes ".")."""
    for root in roots:
        pattern = re.compile(rf"(?<![\w.~/\\-]){re.escape(root.rstrip('/'))}(/(?=[\w.+~-])|(?![\w.+/-]))")
        text = pattern.sub(lambda m: "" if m.group(1) else ".", text)
    return text


def relocate_parquet(path: Path, roots: list[str]) -> bool:
    """Rewrite the paths in a parquet file's schema metadata (the data columns are left as they are)."""
    import pyarrow.parquet as pq

    meta = parquet_metadata(path)
    new = {k: relocate_text(v.decode("utf-8"), roots).encode() for k, v in meta.items()}
    if new == meta:
        return False
    table = pq.read_table(path)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(new), tmp, compression="zstd")
    return True


def relocate(path: Path, roots: list[str]) -> bool:
    """Rewrite one file in place (atomically); True when it changed."""
    if path.suffix == ".parquet":
        return relocate_parquet(path, roots)
    text = _decoded(path) if path.suffix in TEXT_SUFFIXES else None
    if text is None:
        return False
    new = relocate_text(text, roots)
    if new == text:
        return False
    atomic_write_text(path, new)
    return True


def check_roots(roots: list[str]) -> list[str]:
    bad = [r for r in roots if not r.startswith("/") or r.rstrip("/") == ""]
    if bad:
        raise SystemExit(f"--old-root takes the absolute path of the checkout the files were written in (e.g. "
                         f"/work/main), got {', '.join(map(repr, bad))}")
    return roots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-root", action="append", default=None,
                    help="absolute path of the checkout the files were written in (repeatable; default: this one)")
    ap.add_argument("--check", action="store_true", help="rewrite nothing; list the absolute paths left")
    ap.add_argument("--results", type=Path, default=REPO / "results", help="the folder to rewrite (default: results/)")
    args = ap.parse_args(argv)
    files = results_files(args.results)
    if not args.check:
        roots = check_roots(args.old_root or [str(REPO)])
        changed = [p for p in files if relocate(p, roots)]
        print(f"[relocate] {len(changed)} of {len(files)} files rewritten (paths under {', '.join(roots)})")
    left = {p: found for p in files if (found := absolute_paths(p))}
    for p, found in left.items():
        print(f"{p}: {len(found)} absolute path(s), first {found[0]}", file=sys.stderr)
    if left:
        print(f"[relocate] {len(left)} files still hold an absolute path; rewrite them with --old-root <the path "
              "they start with>, or fix the writer", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
