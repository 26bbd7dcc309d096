"""What every benchmark runner needs to know about one evaluation: the model, the backend, the knobs, the paths.

Built by evaluation.evaluate from the Hydra config; runners (generative.py, lm_eval_bench.py, likelihood.py)
take it and return the benchmark-specific part of a result. The HF model is loaded once, lazily, and shared by
every benchmark of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evaluation.items import fingerprint


@dataclass
class EvalContext:
    model_cfg: dict                       # as configs/model/*.yaml: name, name_or_path, tokenizer, dtype, ...
    items_dir: Path                       # results/metrics/<run>[/checkpoint-N]/items
    cache_dir: Path | None = None         # results/metrics/_cache: shared across runs (general_kl base answers)
    backend: str = "hf"
    limit: int | None = None
    subset_seed: int = 1234
    seed: int = 0
    batch_size: int = 8
    chunk_size: int = 32
    resume: bool = True
    progress: bool = True
    overrides: dict = field(default_factory=dict)   # n_runs, temperature, top_p, max_new_tokens (None: benchmark's)
    chat_template_kwargs: dict = field(default_factory=dict)
    vllm: dict = field(default_factory=dict)         # python, tensor_parallel_size, max_model_len, ...
    base_model_cfg: dict | None = None               # general_kl's reference model
    _pair: tuple | None = None

    def pair(self):
        """(hf_model, tokenizer), loaded once. A from_config model is seeded so it is the same every time."""
        if self._pair is None:
            import torch

            from common.generation import load_for_generation

            torch.manual_seed(self.seed)
            self._pair = load_for_generation(self.model_cfg)
        return self._pair

    def tokenizer(self):
        if self._pair is not None:
            return self._pair[1]
        from common.models import load_tokenizer

        return load_tokenizer(self.model_cfg)

    def generation_model(self):
        """What common.generation.generate takes for this backend: the loaded pair (HF) or the config (vLLM)."""
        return self.pair() if self.backend == "hf" else self.model_cfg

    def model_fp(self) -> str:
        return model_fingerprint(self.model_cfg, self.seed)

    def setting(self, bench: dict, key: str, default=None):
        """An eval-wide override when set, else the benchmark's own value."""
        v = self.overrides.get(key)
        return v if v is not None else bench.get(key, default)


def model_fingerprint(model_cfg: dict, seed: int = 0) -> str:
    """Identity of the weights: path + size/mtime of the weight files (a retrained run gets a new one)."""
    from common.models import resolve

    ident = {k: model_cfg.get(k) for k in ("name_or_path", "tokenizer", "dtype", "from_config", "chat_template")}
    for k in ("name_or_path", "tokenizer"):  # ./x, x and /abs/x name the same folder
        if ident[k]:
            try:
                ident[k] = resolve(str(ident[k]))
            except FileNotFoundError:
                pass
    if model_cfg.get("from_config"):
        ident["seed"] = seed
    else:
        p = Path(resolve(str(model_cfg["name_or_path"])))
        if p.is_dir():
            ident["weights"] = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime))
                                      for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))
    return fingerprint(ident)
