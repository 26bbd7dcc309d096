"""Regenerate the committed test assets: a tiny chat data set and a tiny byte-level BPE tokenizer.

    python tests/assets/make_assets.py

Both are deterministic and small, so tests never download anything. The data are arithmetic word problems
whose answers follow a fixed pattern a 2-layer model learns within a few steps (the loss visibly falls).
"""

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).parent
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen-style ChatML, without a default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def make_chat(n: int = 96, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana"]
    things = ["apples", "books", "coins", "pencils", "stamps", "marbles"]
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        who, what = rng.choice(names), rng.choice(things)
        q = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"
        ans = (f"{who} starts with {a} {what} and gets {b} more, so {a} + {b} = {a + b}. "
               f"The answer is \\boxed{{{a + b}}}.")
        rows.append({"id": f"tiny-{i}", "problem": q, "messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": ans}],
                     "answer": str(a + b)})
    return rows


def make_tokenizer(texts: list[str], vocab_size: int = 384) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def main() -> None:
    rows = make_chat()
    with open(HERE / "tiny_chat.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [m["content"] for r in rows for m in r["messages"]] + ["system user assistant tool"]
    out = HERE / "tiny-tokenizer"
    out.mkdir(exist_ok=True)
    make_tokenizer(texts).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    print(f"wrote {len(rows)} rows and a tokenizer to {HERE}")


if __name__ == "__main__":
    main()
