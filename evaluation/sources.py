"""Where a benchmark's items come from: local files (the offline bundle, fixtures, your own) or the Hugging Face Hub.

    python -m evaluation.sources gsm8k      # prints where gsm8k would load from, and its first item

Rule (`bench.<name>.source`): `local` and `hub` are explicit; `auto` (default) takes the local files when they
exist and the benchmark's local copy is the same data as its Hub id (`prefer_local: true`), else the Hub; with
HF_HUB_OFFLINE=1 it never tries the Hub. MedQA is the exception that sets prefer_local: false, because the copy
that ships offline has 5 options while the Hub default has 4.

Local files are JSONL (one object a line), a JSON list, or parquet. Every row is checked for the fields the
benchmark needs, and a bad row is reported as file:line with the missing key.

`preflight` runs before any model loads: it applies the rule to every benchmark of the evaluation and, when
the Hub is needed, checks once that it answers, so missing data is reported for all benchmarks at once (with
`make eval-data` for the ones that ship offline) instead of one at a time after the Hub client's retries.

Data variants: a benchmark config can name the variant its reference numbers use (`reference_variant`: option
count or item count), a note that goes with every number (`data_note`), and a file size that marks the wrong
variant (`refuse_items`, e.g. PubMedQA's 1,000-item ori_pqal.json instead of the 500-item test fold).
`data_note` builds the sentence stored in a result's settings.data_note; `refuse_variant` stops such a file
before any model work.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common.files import REPO, repo_path


class DataFormatError(ValueError):
    """A benchmark data file is missing or malformed; the message names the file, line and key to fix."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def local_files(bench: dict) -> list[Path]:
    """Every local file/folder a benchmark's `local` block names (empty when it has none)."""
    loc = bench.get("local") or {}
    out = []
    # with per-subtask folders (MMLU) data_files are names inside each folder, not paths
    for key in ("data_dir",) if "subtask_yaml" in loc else ("data_files", "data_dir"):
        v = loc.get(key)
        if isinstance(v, dict):
            out += [repo_path(x) for x in v.values()]
        elif isinstance(v, (list, tuple)):
            out += [repo_path(x) for x in v]
        elif v:
            out.append(repo_path(v))
    return out


def choose_source(bench: dict, offline: bool | None = None) -> str:
    """'local' or 'hub' for a benchmark config, by the rule in the module docstring (offline=None: from
    HF_HUB_OFFLINE)."""
    offline = hub_offline() if offline is None else offline
    name, src = bench["name"], bench.get("source", "auto")
    if src not in ("auto", "local", "hub"):
        raise ValueError(f"bench.{name}.source must be auto, local or hub, got {src!r}")
    files = local_files(bench)
    have_local = bool(files) and all(f.exists() for f in files)
    if src == "auto":
        if have_local and (bench.get("prefer_local", True) or offline or not bench.get("hub")):
            src = "local"
        elif bench.get("hub") and not offline:
            src = "hub"
        else:
            src = "local"
    if src == "local" and not have_local:
        missing = next((f for f in files if not f.exists()), None)
        where = f"{missing} does not exist" if missing else "no local files are configured"
        hint = "run `make eval-data`" if bench.get("bundled") else "this data does not ship offline"
        raise DataFormatError(
            f"benchmark {name!r}: {where}. Either {hint} or point it at a local copy: "
            f"bench.{name}.local.{'data_dir' if 'data_dir' in (bench.get('local') or {}) else 'data_files'}=<path>"
            + ("" if offline or not bench.get("hub") else f", or use the Hub: bench.{name}.source=hub"))
    if src == "hub" and not bench.get("hub"):
        raise ValueError(f"benchmark {name!r} has no Hub source; set bench.{name}.local")
    return src


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub endpoint answers at all (any HTTP status), through the proxies the Hub client uses."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def _data_problem(bench: dict, hub_ok) -> str | None:
    """Why a benchmark cannot get its data here, or None. hub_ok() is asked only when the Hub is needed."""
    name = bench["name"]
    try:
        if choose_source(bench) == "local" or hub_ok():
            return None
    except ValueError as e:  # DataFormatError (missing files) and bad source settings alike
        return str(e)
    why = "HF_HUB_OFFLINE=1" if hub_offline() else "the Hub is unreachable from here"
    if bench.get("source") == "hub":
        return f"benchmark {name!r}: bench.{name}.source=hub, but {why}; point bench.{name}.local at a copy"
    try:
        choose_source(bench, offline=True)  # without the Hub, auto means the local files: name the missing
    except ValueError as e:
        return f"{e} ({why})"
    return None


def preflight(benches: list[dict], extra: list[str] = ()) -> None:
    """Raise one DataFormatError listing every benchmark whose data is neither here nor on a reachable Hub,
    and the `extra` problems the caller found (files a benchmark needs besides its items)."""
    online: list[bool] = []

    def hub_ok() -> bool:
        if not online:  # one probe for the whole suite
            online.append(not hub_offline() and hub_reachable())
        return online[0]

    problems = [p for b in benches if (p := _data_problem(b, hub_ok))] + list(extra)
    if problems:
        raise DataFormatError(
            f"{len(problems)} data problem(s) for {len(benches)} benchmarks (nothing was evaluated):\n  - "
            + "\n  - ".join(problems)
            + "\n`make eval-data` (python -m evaluation.data_bundle) fetches every benchmark that ships "
              "offline; the others need your own copy (bench.<name>.local) or access to the Hub.")


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise DataFormatError(f"{path}: a JSON list of objects was expected")
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{n}: not valid JSON ({e.msg}); expected one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows


def pick_field(row: dict, candidates, where: str, role: str):
    for key in [candidates] if isinstance(candidates, str) else candidates:
        if key in row and row[key] is not None:
            return row[key]
    raise DataFormatError(f"{where}: no {role} field (looked for {list(candidates) if not isinstance(candidates, str) else [candidates]}); "
                          f"keys present: {sorted(row)}")


def data_note(bench: dict, n_items: int | None = None, n_options: int | None = None) -> str | None:
    """What a reader must know next to this benchmark's number: the config's note, and where the data differs
    from the reference variant (a 5-option MedQA, a PubMedQA file that is not the 500-item test fold)."""
    notes = [bench["data_note"]] if bench.get("data_note") else []
    ref = bench.get("reference_variant") or {}
    if n_options and ref.get("n_options") and n_options != ref["n_options"]:
        notes.append(f"{n_options} options: not comparable to {ref['name']} ({ref['n_options']} options)")
    if n_items and ref.get("n_items") and n_items != ref["n_items"]:
        notes.append(f"{n_items} items: not the {ref['n_items']} of {ref['name']}")
    return "; ".join(notes) or None


def refuse_variant(bench: dict, n_items: int, where: str) -> None:
    """Stop on a file whose size says it is the wrong variant of the benchmark (`refuse_items` in its config)."""
    bad = bench.get("refuse_items") or {}
    if bad and n_items == bad["n"]:
        name = bench["name"]
        raise DataFormatError(f"{where}: {n_items} items: {bad['why']}. Point bench.{name}.local.data_files at the "
                              f"reference variant, or set bench.{name}.refuse_items=null to score this file anyway")


def load_items(bench: dict) -> tuple[list[dict], str]:
    """(rows, data_source) for a generative benchmark. Rows keep their `_where` (file:line) for error messages."""
    src = choose_source(bench)
    if src == "local":
        rows = []
        for path in local_files(bench):
            for i, r in enumerate(read_rows(path), 1):
                r["_where"] = f"{path}:{i}"
                rows.append(r)
        return rows, ",".join(str(p) for p in local_files(bench))
    from datasets import load_dataset

    hub = bench["hub"]
    ds = load_dataset(hub["path"], hub.get("name"), split=hub.get("split", "test"))
    rows = [dict(r, _where=f"{hub['path']}[{i}]") for i, r in enumerate(ds)]
    return rows, f"{hub['path']}" + (f"/{hub['name']}" if hub.get("name") else "") + f":{hub.get('split', 'test')}"


if __name__ == "__main__":
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "benchmark" / f"{sys.argv[1]}.yaml"))
    print("source:", choose_source(cfg))
    if cfg.get("kind") == "generate":
        rows, where = load_items(cfg)
        print(where, len(rows), json.dumps(rows[0], default=str)[:500])
