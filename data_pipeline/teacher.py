"""The math teacher: who answers each prompt. Backends (domain.teacher.backend):

- vllm: the cluster path (the paper's teacher, Qwen3-235B-A22B-Instruct-2507) through
  common.generation.generate(backend="vllm"), the same prompt rendering and sampling code evaluation uses.
- hf: transformers generate() on a small local model, same function with backend="hf" (CPU, tests).
- reference: the source's own reference solution is the "response". The CPU default uses it because a model
  teacher that fits a CPU keeps almost nothing: SmolLM2-135M solves ~5% of GSM8K in our pilot, so
  verification would discard ~95% of its answers and the few it keeps are the easiest items.

Every backend's output goes through the same verification, so a reference solution whose final line does not
match its own answer is dropped like a wrong model answer.

The prompt is `prompt.template` with "{problem}" replaced (str.replace, not str.format: math templates contain
braces such as \\boxed{}), preceded by `prompt.system` when set. The training row is exactly this prompt plus
the kept response.
"""

from __future__ import annotations

import inspect
import time

from data_pipeline.adapters import last_boxed


def conversation(problem: str, prompt_cfg) -> list[dict]:
    msgs = [{"role": "system", "content": prompt_cfg["system"]}] if prompt_cfg.get("system") else []
    return msgs + [{"role": "user", "content": prompt_cfg["template"].replace("{problem}", problem)}]


def reference_response(record: dict, fmt: str = "boxed") -> str:
    """The record's reference solution as a response. `verbatim`: unchanged. `boxed`: a GSM8K '#### N' final
    line becomes 'The final answer is $\\boxed{N}$.' (what the prompt asks for and what the math graders read);
    a solution without any final-answer marker gets that line appended; one with \\boxed{} is left alone."""
    sol = record.get("solution")
    if not isinstance(sol, str) or not sol.strip():
        return ""
    sol = sol.strip()
    if fmt == "verbatim":
        return sol
    if fmt != "boxed":
        raise ValueError(f"teacher.reference_format must be boxed or verbatim, got {fmt!r}")
    if "####" in sol:
        body, final = sol.rsplit("####", 1)
        return f"{body.rstrip()}\nThe final answer is $\\boxed{{{final.strip()}}}$."
    if last_boxed(sol) is None:
        return f"{sol}\nThe final answer is $\\boxed{{{record['answer']}}}$."
    return sol


class Teacher:
    def __init__(self, cfg, prompt_cfg):
        self.cfg, self.prompt_cfg = cfg, prompt_cfg
        self.backend = cfg["backend"]
        self._loaded = None
        if self.backend not in ("reference", "hf", "vllm"):
            raise ValueError(f"teacher.backend must be reference, hf or vllm, got {self.backend!r}")

    def describe(self) -> dict:
        keys = ["backend", "reference_format"] if self.backend == "reference" else [
            "backend", "model", "max_new_tokens", "temperature", "top_p", "n", "seed", "tensor_parallel_size",
            "max_model_len", "engine_kwargs"]
        return {k: self.cfg.get(k) for k in keys}

    def respond(self, records: list[dict]) -> list[list[str]]:
        """One list of responses (n of them) per record."""
        if self.cfg.get("delay_s"):
            time.sleep(float(self.cfg["delay_s"]))  # simulates a slow teacher (the kill/resume test uses it)
        if self.backend == "reference":
            return [[reference_response(r, self.cfg.get("reference_format", "boxed"))] for r in records]
        return self._generate([conversation(r["problem"], self.prompt_cfg) for r in records])

    def _generate(self, conversations: list[list[dict]]) -> list[list[str]]:
        from common.generation import generate, load_for_generation

        c = self.cfg
        model = c["model"]
        if self.backend == "hf":  # load once per process, not once per chunk
            if self._loaded is None:
                self._loaded = load_for_generation(model)
            model = self._loaded
        kwargs = {"backend": self.backend, "max_new_tokens": int(c["max_new_tokens"]),
                  "temperature": float(c.get("temperature", 0.0)), "top_p": float(c.get("top_p", 1.0)),
                  "n": int(c.get("n", 1)), "seed": int(c.get("seed", 0)),
                  "tensor_parallel_size": int(c.get("tensor_parallel_size", 1)),
                  "max_model_len": c.get("max_model_len"), "progress": False}
        if c.get("batch_size"):
            kwargs["batch_size"] = int(c["batch_size"])
        if c.get("vllm_python"):
            kwargs["vllm_python"] = c["vllm_python"]
        extra = dict(c.get("engine_kwargs") or {})
        if extra:  # e.g. enable_expert_parallel for the MoE teacher; fail loudly if generate() cannot take them
            accepted = inspect.signature(generate).parameters
            missing = [k for k in extra if k not in accepted] if "kwargs" not in accepted else []
            if missing:
                raise TypeError(f"teacher.engine_kwargs {missing} are not accepted by "
                                "common.generation.generate; remove them or extend generate()")
            kwargs.update(extra)
        outs = generate(model, conversations, **kwargs)
        if len(outs) != len(conversations):
            raise RuntimeError(f"generate() returned {len(outs)} outputs for {len(conversations)} prompts")
        return [list(o) for o in outs]
