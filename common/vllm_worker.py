"""vLLM worker: runs `vllm.LLM.generate` on pre-tokenised prompts, JSONL in, JSONL out (started by generation.py).

    .venv-vllm/bin/python -m common.vllm_worker --params p.json --input in.jsonl --output out.jsonl

params.json: {model, tokenizer, dtype, tensor_parallel_size, max_model_len, seed, sampling: {n, temperature,
top_p, max_tokens, seed}}. Input rows: {prompt, prompt_token_ids}; output rows: {index, outputs: [n strings]}.
It runs in its own process (and, on the CPU, its own venv) because vLLM pins its own torch and transformers;
it imports nothing from this project but the standard library and vLLM, so that venv stays minimal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    a = ap.parse_args(argv)
    params = json.loads(Path(a.params).read_text())
    rows = [json.loads(line) for line in Path(a.input).read_text().splitlines() if line.strip()]

    from vllm import LLM, SamplingParams

    kwargs = {"model": params["model"], "tokenizer": params.get("tokenizer") or params["model"],
              "dtype": params.get("dtype", "auto"), "tensor_parallel_size": params.get("tensor_parallel_size", 1),
              "seed": params.get("seed", 0)}
    if params.get("max_model_len"):
        kwargs["max_model_len"] = params["max_model_len"]
    if os.environ.get("EAFT_VLLM_ENFORCE_EAGER", "1") == "1":
        kwargs["enforce_eager"] = True  # no CUDA-graph / torch.compile warm-up: faster start for short jobs
    llm = LLM(**kwargs)
    s = params["sampling"]
    greedy_repeats = s["n"] if s["temperature"] == 0 else 1  # greedy: one completion, repeated n times (as HF)
    sampling = SamplingParams(n=s["n"] // greedy_repeats, temperature=s["temperature"],
                              top_p=s["top_p"] if s["temperature"] > 0 else 1.0, max_tokens=s["max_tokens"],
                              seed=s.get("seed"), skip_special_tokens=True)
    prompts = [{"prompt_token_ids": r["prompt_token_ids"]} for r in rows]
    results = llm.generate(prompts, sampling, use_tqdm=True)
    tmp = Path(a.output).with_suffix(".tmp")
    with tmp.open("w") as f:
        for i, res in enumerate(results):
            outs = [o.text for o in res.outputs] * greedy_repeats
            f.write(json.dumps({"index": i, "outputs": outs}) + "\n")
    tmp.replace(a.output)


def exit_skipping_teardown() -> None:
    """Exit 0 without interpreter teardown, once a vLLM process's output is written (atomically): at teardown
    vLLM's CPU engine threads sometimes abort ("terminate called without an active exception") and would turn a
    finished run into exit -6. Anything the engine leaves behind is killed by the caller
    (common.generation.run_vllm_subprocess)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":  # vLLM spawns an engine process: the guard keeps it from re-running main
    main()
    exit_skipping_teardown()
