"""Chat generation shared by evaluation and the data pipeline: one prompt renderer, two backends.

    from common.generation import generate, render_prompts
    outs = generate("./data/assets/smollm2-135m-instruct", [[{"role": "user", "content": "2+2?"}]],
                    max_new_tokens=32)                       # -> [["4"]]: n completions per conversation
    python -m common.generation ./data/assets/smollm2-135m-instruct "What is 2+2?"   # quick check

`render_prompts` is the ONE place prompts go through the chat template (add_generation_prompt=True). Both
backends consume its strings, tokenised with add_special_tokens=False (the template already holds any BOS), so
HF and vLLM see the same token ids and differ only in numerics.

- backend="hf": in-process transformers, batched with left padding, greedy (temperature=0) or sampling.
- backend="vllm": `vllm.LLM.generate` on those token ids in a worker subprocess
  (`python -m common.vllm_worker`, JSONL in and out) started with `vllm_python`: default `.venv-vllm/bin/python`
  when it exists (the CPU build, `make vllm-venv`), else the current interpreter (GPU clusters install vLLM
  in the main environment through the `gpu` extra).

`model` is a local folder or Hub id, a model config mapping as in configs/model/*.yaml (name_or_path, tokenizer,
dtype, from_config, chat_template), or an already loaded `(hf_model, tokenizer)` pair (HF backend only).

Thinking models say so in their config (`thinking: true`, with the generation budget `max_new_tokens` from the
model card); `is_thinking` and `generation_budget` read those keys for every generative benchmark, ours and
lm-eval's alike (evaluation.grading.final_answer takes the answer after the last </think>).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from common.files import REPO, read_jsonl

VLLM_VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def _as_messages(conv) -> list[dict]:
    if isinstance(conv, str):  # a bare string is one user turn
        return [{"role": "user", "content": conv}]
    if isinstance(conv, Mapping) and "messages" in conv:
        return list(conv["messages"])
    if not isinstance(conv, Sequence) or not all(isinstance(m, Mapping) and "role" in m for m in conv):
        raise ValueError(f"a conversation must be a string or a list of {{role, content}} dicts, got {conv!r:.200}")
    return [dict(m) for m in conv]


def _per_conversation_tools(tools, n: int) -> list:
    """None, one schema list shared by every conversation, or one list (or None) per conversation."""
    if tools is None:
        return [None] * n
    if len(tools) == n and all(t is None or isinstance(t, (list, tuple)) for t in tools):
        return [list(t) if t is not None else None for t in tools]
    if all(isinstance(t, Mapping) for t in tools):
        return [list(tools)] * n
    raise ValueError("tools must be None, a list of function schemas, or one list per conversation "
                     f"({n} conversations, got {len(tools)} entries)")


def render_prompts(tokenizer, conversations, tools=None, **chat_template_kwargs) -> list[str]:
    """Chat-template strings ending in the assistant header, one per conversation."""
    convs = [_as_messages(c) for c in conversations]
    per_tools = _per_conversation_tools(tools, len(convs))
    out = []
    for msgs, t in zip(convs, per_tools):
        kwargs = dict(chat_template_kwargs)
        if t is not None:
            kwargs["tools"] = t
        out.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs))
    return out


def load_for_generation(model, dtype: str | None = None):
    """(hf_model, tokenizer) from a path / Hub id, a model config mapping, or an already loaded pair."""
    from common.models import load_model, load_tokenizer

    if isinstance(model, tuple):
        return model
    cfg = model_config(model)
    tok = load_tokenizer(cfg)
    return load_model(cfg, tok, dtype=dtype).eval(), tok


def model_config(model) -> dict:
    if isinstance(model, (str, os.PathLike)):
        return {"name": str(model), "name_or_path": str(model)}
    if isinstance(model, Mapping):
        return dict(model)
    raise TypeError(f"model must be a path, a Hub id, a model config or a (model, tokenizer) pair, not {type(model)}")


def is_thinking(model_cfg: Mapping) -> bool:
    """True when the model's config says it reasons before answering (`thinking: true`)."""
    v = model_cfg.get("thinking", False)
    if not isinstance(v, bool):
        raise TypeError(f"model {model_cfg.get('name')!r}: `thinking` must be true or false, got {v!r}")
    return v


def generation_budget(model_cfg: Mapping, bench_value, override=None, bench_name: str = "?") -> int | None:
    """max_new_tokens for one benchmark: the eval-wide override when set; for a thinking model its own budget
    (a reasoning trace is as long as the model needs, not as long as one benchmark's answers); else the
    benchmark's value (None: the benchmark's tool decides, e.g. lm-eval's 1,280 for IFEval)."""
    if override is not None:
        return int(override)
    if is_thinking(model_cfg):
        budget = model_cfg.get("max_new_tokens")
        if not budget:
            raise ValueError(f"model {model_cfg.get('name')!r} has `thinking: true` but no `max_new_tokens` (the "
                             "model card's output length) in its config; add it, or set max_new_tokens=<n> for "
                             f"this evaluation ({bench_name})")
        return int(budget)
    return None if bench_value is None else int(bench_value)


def _stop_ids(hf_model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def _generate_hf(model, prompts: list[str], *, max_new_tokens, temperature, top_p, n, seed, batch_size,
                 max_model_len, progress) -> list[list[str]]:
    hf_model, tok = load_for_generation(model)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_model_len:
        too_long = [i for i, x in enumerate(ids) if len(x) >= max_model_len]
        if too_long:
            raise ValueError(f"{len(too_long)} prompts (first: #{too_long[0]}, {len(ids[too_long[0]])} tokens) do not "
                             f"fit max_model_len={max_model_len}; raise it or shorten the prompts")
    device = next(hf_model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stop = _stop_ids(hf_model, tok)
    sample = temperature > 0
    # Longest first: similar lengths share a batch (less padding); the order is restored at the end.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: list[list[str] | None] = [None] * len(ids)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    for b, idx in enumerate(tqdm(batches, desc="generate[hf]", unit="batch", disable=not progress)):
        width = max(len(ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i])
            attn[r, width - len(ids[i]):] = 1
        new = max_new_tokens if not max_model_len else min(max_new_tokens, max_model_len - width)
        kwargs = {"do_sample": sample, "max_new_tokens": new, "eos_token_id": stop, "pad_token_id": pad,
                  "num_return_sequences": n if sample else 1}
        if sample:
            torch.manual_seed(seed + b)  # per batch, so a resumed or re-batched run repeats its draws
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        gen = hf_model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kwargs)
        texts = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
        per = n if sample else 1
        for r, i in enumerate(idx):
            outs = texts[r * per: (r + 1) * per]
            out[i] = outs if sample else outs * n  # greedy: n identical completions, generated once
    return out  # type: ignore[return-value]


def default_vllm_python() -> str:
    return str(VLLM_VENV_PYTHON) if VLLM_VENV_PYTHON.exists() else sys.executable


def _generate_vllm(model, prompts: list[str], *, max_new_tokens, temperature, top_p, n, seed, batch_size,
                   tensor_parallel_size, max_model_len, vllm_python, progress, tokenizer) -> list[list[str]]:
    cfg = model_config(model) if not isinstance(model, tuple) else None
    if cfg is None or cfg.get("from_config"):
        raise ValueError("backend=vllm needs a model saved on disk or a Hub id (vLLM loads it itself); "
                         "a randomly initialised `from_config` model or an in-memory pair only works with backend=hf")
    from common.models import resolve

    path = resolve(cfg["name_or_path"])
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    params = {"model": path, "tokenizer": resolve(cfg.get("tokenizer") or cfg["name_or_path"]),
              "dtype": {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(
                  cfg.get("dtype", "auto"), "auto"),
              "tensor_parallel_size": tensor_parallel_size, "max_model_len": max_model_len, "seed": seed,
              "sampling": {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens,
                           "seed": seed}}
    with tempfile.TemporaryDirectory(prefix="eaft-vllm-") as tmp:
        inp, outp = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with inp.open("w") as f:
            for p, x in zip(prompts, ids):
                f.write(json.dumps({"prompt": p, "prompt_token_ids": x}) + "\n")
        (Path(tmp) / "params.json").write_text(json.dumps(params))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        cmd = [vllm_python or default_vllm_python(), "-m", "common.vllm_worker", "--params",
               str(Path(tmp) / "params.json"), "--input", str(inp), "--output", str(outp)]
        run_vllm_subprocess(cmd, env, outp, stdout=None if progress else subprocess.DEVNULL,
                            hint="for the CPU build run `make vllm-venv`, on a GPU install the `gpu` extra")
        rows = read_jsonl(outp)
    if len(rows) != len(prompts):
        raise RuntimeError(f"vLLM worker returned {len(rows)} results for {len(prompts)} prompts")
    return [r["outputs"] for r in sorted(rows, key=lambda r: r["index"])]


def run_vllm_subprocess(cmd: list[str], env: dict, out: Path, stdout=None, hint: str = "") -> None:
    """Run a vLLM worker process that writes `out` atomically when it has finished.

    vLLM's CPU engine sometimes dies of a C++ abort ("terminate called without an active exception", exit -6)
    in its background threads; the workers end with os._exit right after their atomic write, and a worker killed
    by a signal before writing is run once more. Any other failure, or a second one, raises.

    os._exit skips vLLM's shutdown, so its engine-core process outlives the worker, holding our stdout/stderr
    (a caller reading them through a pipe then waits forever). The worker therefore runs in its own process
    group, and whatever is left of that group is killed when the worker has exited (or when we are interrupted).
    """
    import signal

    for attempt in (1, 2):
        proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=stdout, start_new_session=True)
        try:
            returncode = proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if returncode == 0 and out.exists():
            return
        if returncode < 0 and attempt == 1 and not out.exists():
            print(f"vLLM worker killed by signal {-returncode}; running it once more", file=sys.stderr)
            continue
        raise RuntimeError(f"vLLM worker failed (exit {returncode}): {' '.join(cmd)}" + (f"; {hint}" if hint else ""))


def generate(model, conversations, *, backend: str = "hf", max_new_tokens: int = 512, temperature: float = 0.0,
             top_p: float = 1.0, n: int = 1, seed: int = 0, batch_size: int = 8, tensor_parallel_size: int = 1,
             max_model_len: int | None = None, tools=None, chat_template_kwargs: dict | None = None,
             vllm_python: str | None = None, progress: bool = True) -> list[list[str]]:
    """n completions (decoded, special tokens removed) for each conversation, in input order."""
    if backend not in ("hf", "vllm"):
        raise ValueError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1 (got n={n}, max_new_tokens={max_new_tokens})")
    conversations = list(conversations)
    if not conversations:
        return []
    if backend == "hf":
        model = load_for_generation(model)
        tokenizer = model[1]
    else:
        from common.models import load_tokenizer

        tokenizer = model[1] if isinstance(model, tuple) else load_tokenizer(model_config(model))
    prompts = render_prompts(tokenizer, conversations, tools=tools, **(chat_template_kwargs or {}))
    common = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "n": n, "seed": seed,
              "batch_size": batch_size, "max_model_len": max_model_len, "progress": progress}
    if backend == "hf":
        return _generate_hf(model, prompts, **common)
    return _generate_vllm(model, prompts, tensor_parallel_size=tensor_parallel_size, vllm_python=vllm_python,
                          tokenizer=tokenizer, **common)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("prompt", nargs="+")
    ap.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    for p, outs in zip(a.prompt, generate(a.model, a.prompt, backend=a.backend, max_new_tokens=a.max_new_tokens)):
        print(f"### {p}\n{outs[0]}\n")
