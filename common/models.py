"""Load tokenizers and causal LMs from a `model` config: a Hub id, a local folder, or a config (random init).

Paths: a value that starts with '.', '/' or '~', or names a folder that exists (common.files.repo_path: relative
to the working directory, else to the repository root), is local; a missing local path is an error that says how to make it.
Anything else of the form `org/name` is a Hub id. The CPU default and the tests only use local paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from common.files import REPO, repo_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # files, where models are folders or Hub ids

MISSING_HINTS = {
    "model": "for the CPU default run `make assets`, or set model.name_or_path to a local folder or a Hub id",
    "data": "build it with `make data DOMAIN=<domain>` (python -m data_pipeline.build), or set data.train_file "
            "to an existing file",
}


def resolve(name_or_path: str, kind: str | None = None) -> str:
    """Local path (common.files.repo_path, symlinks resolved) or the Hub id unchanged.

    `kind` ("model" or "data") picks the hint of the error for a missing local path; None guesses from the name
    (a data file has a suffix such as .jsonl)."""
    p = Path(name_or_path).expanduser()
    local = repo_path(p)
    if local.exists():
        return str(local.resolve())
    kind = kind or ("data" if p.suffix in DATA_SUFFIXES else "model")
    looks_local = (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
                   or kind == "data")
    if looks_local:
        raise FileNotFoundError(f"{kind} path {name_or_path!r} does not exist (looked in {Path.cwd()} and "
                                f"{REPO}); {MISSING_HINTS[kind]}")
    return name_or_path


def load_tokenizer(model_cfg, template_hint: str = "set model.chat_template"):
    """The tokenizer of a model config (`tokenizer`, else `name_or_path`), with a pad token (eos when it has
    none) and `chat_template` (the template's text) replacing its own; no template at all is an error whose
    fix is `template_hint`."""
    tok = AutoTokenizer.from_pretrained(resolve(model_cfg.get("tokenizer") or model_cfg["name_or_path"]),
                                        trust_remote_code=model_cfg.get("trust_remote_code", False))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model_cfg.get("chat_template"):
        tok.chat_template = model_cfg["chat_template"]
    if tok.chat_template is None:
        raise ValueError(f"tokenizer of model {model_cfg['name']!r} has no chat template; {template_hint}")
    return tok


def load_model(model_cfg, tokenizer=None, dtype: str | None = None):
    """A causal LM. `from_config` builds a random model (tests); otherwise from_pretrained."""
    dtype = DTYPES[dtype or model_cfg.get("dtype", "float32")]
    kwargs = {"attn_implementation": model_cfg.get("attn_implementation", "sdpa")}
    if model_cfg.get("from_config"):
        spec = dict(model_cfg["from_config"])
        if tokenizer is not None:
            spec.setdefault("vocab_size", len(tokenizer))
            spec.setdefault("pad_token_id", tokenizer.pad_token_id)
            spec.setdefault("eos_token_id", tokenizer.eos_token_id)
        config = AutoConfig.for_model(**spec)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        return model.to(torch.float32 if dtype == "auto" else dtype)
    return AutoModelForCausalLM.from_pretrained(resolve(model_cfg["name_or_path"]), dtype=dtype,
                                                trust_remote_code=model_cfg.get("trust_remote_code", False),
                                                **kwargs)
