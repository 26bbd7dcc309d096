"""Small file helpers shared by every stage: the path rule (how paths are recorded, relative to the repository
root, and read back: repo_relative / repo_path), atomic writes, JSONL reading with line numbers, hashes.

Every file the pipeline writes goes to a temporary name in the same folder and is renamed into place, so a
killed process leaves either the old file or the new one, never half of one (rename is atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_relative(path: str | Path) -> str:
    """A path as records (manifests, results, run logs) store it: relative to the repository root when it lies
    inside it, so committed files read the same on every clone. A relative path as given (`./data/x`, or a Hub id
    `org/name` that only looks like one), and a path outside the repository, come back unchanged."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        if Path.cwd().resolve() == REPO or not p.exists():
            return str(path)
        p = Path.cwd() / p  # an existing path given relative to another working directory
    # the path as written first (a symlinked folder inside the repository stays inside), then the real one
    for cand in (Path(os.path.normpath(p)), p.resolve()):
        if cand.is_relative_to(REPO):
            return cand.relative_to(REPO).as_posix()
    return str(path) if Path(path).is_absolute() else str(p)


def repo_path(path: str | Path, must_exist: bool = False) -> Path:
    """The one rule for reading a path, given by a user or read back from a record: `~` expanded; an absolute
    path as is; a relative one against the working directory when it exists there, else against the repository
    root (records store paths relative to it, see repo_relative; Hydra jobs, tests and other tools change the
    working directory). Always absolute, symlinks kept. `must_exist`: a missing path is a FileNotFoundError
    naming both places looked in."""
    p = Path(path).expanduser()
    if p.is_absolute():
        found = p
    else:
        found = p.absolute() if p.exists() else REPO / p
    if must_exist and not found.exists():
        where = str(p) if p.is_absolute() else f"{Path.cwd()} and {REPO}"
        raise FileNotFoundError(f"{str(path)!r} not found (looked in {where})")
    return found


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in `path`'s folder with the permissions a plain open() would give (mkstemp's are 0600,
    which would make every atomically written result private to its writer on a shared cluster file system)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the rename must not overtake the data on a crash
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name in `path`'s folder for writers that take a path (pyarrow, shutil.copyfile): renamed to
    `path` when the block ends without error, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def jsonl_text(rows: Iterable[dict]) -> str:
    """Rows as JSON lines, exactly as atomic_write_jsonl writes them (so a file can be compared with rows)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, jsonl_text(rows))


class NotUtf8Error(ValueError):
    """A JSONL file holds bytes that are not UTF-8; the message names the file, line and byte."""


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """One line as text, or NotUtf8Error naming file:line: replacing bad bytes with U+FFFD would change the text
    (a damaged download, a Latin-1 export) without anyone noticing."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUtf8Error(f"{path}:{lineno}: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line is not "
                           f"UTF-8 ({e.reason}); re-download or re-export the file as UTF-8") from None


def iter_jsonl(path: str | Path, progress: str | None = None) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yields (line number, parsed object or None, error or None); blank lines are skipped. Bytes that are not
    UTF-8 raise NotUtf8Error (file:line). `progress`: show a bar with this description, counting bytes (so
    multi-GB files get a rate and an ETA)."""
    from tqdm import tqdm

    size = Path(path).stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=progress, mininterval=2,
                                     disable=progress is None) as bar:
        for lineno, raw in enumerate(f, 1):
            bar.update(len(raw))
            line = decode_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj, None


def read_jsonl(path: str | Path) -> list[dict]:
    """Strict reader for files this pipeline wrote itself: a bad line is a bug, so it raises with file:line."""
    rows = []
    for lineno, obj, err in iter_jsonl(path):
        if err:
            raise ValueError(f"{path}:{lineno}: {err}")
        rows.append(obj)
    return rows


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys): for settings and record lists."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def git_sha() -> str | None:
    """The repository's HEAD commit, recorded with every run, data build and result; None outside a checkout."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
