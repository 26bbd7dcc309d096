"""Answer extraction and grading for generated answers: math (math-verify), multiple choice, and the statistics.

    python -m evaluation.grading "The answer is \\boxed{\\frac{1}{2}}." 0.5      # -> extracted, correct

Math follows the Qwen2.5-Math evaluation the paper used: the answer is the content of the LAST \\boxed{} (or
\\fbox{}) in the completion, braces matched so nested ones survive; without a box, the text after the last
"answer is", else the last number (Qwen2.5-Math's fallback for GSM8K-style answers). Both sides are parsed as
LaTeX by math-verify and compared with `verify(parse(gold), parse(pred))`, gold first (the order matters to
math-verify: the gold decides which interpretations count).
"""

from __future__ import annotations

import math
import re
import sys

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_boxed(text: str) -> list[str]:
    """Contents of every \\boxed{...} / \\fbox{...} in order, with nested braces matched. Unclosed: dropped."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1].strip())
    # `\boxed 5` (no braces) is legal LaTeX and some models write it
    out += [m.group(1) for m in re.finditer(r"\\boxed\s+([^\s{$]+)", text)]
    return out


def extract_math_answer(text: str) -> str | None:
    """The final answer of a completion: last box, else after the last 'answer is', else the last number."""
    boxes = extract_boxed(text)
    if boxes:
        return boxes[-1]
    m = list(re.finditer(r"answer is[:\s]*", text, flags=re.IGNORECASE))
    if m:
        tail = text[m[-1].end():].strip().split("\n")[0].strip().rstrip(".")
        if tail:
            return tail.strip("$ ")
    nums = NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def gold_math_answer(gold: str) -> str:
    """GSM8K golds end in '#### 72' (with the worked solution before it); AIME golds are bare integers."""
    gold = str(gold)
    if "####" in gold:
        return gold.split("####")[-1].strip().replace(",", "")
    boxes = extract_boxed(gold)
    return boxes[-1] if boxes else gold.strip()


def _parse(ans: str):
    from math_verify import parse

    ans = ans.strip()
    if not ans.startswith("$"):
        ans = f"${ans}$"  # math-verify extracts LaTeX from math mode; a bare expression would not be read
    return parse(ans)


def math_equal(gold: str, pred: str | None) -> bool:
    if pred is None or not str(pred).strip():
        return False
    from math_verify import verify

    g, p = _parse(gold), _parse(pred)
    if not g:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}; fix the data file")
    try:
        return bool(verify(g, p))
    except Exception:  # noqa: BLE001 -- math-verify raises on exotic expressions; an unreadable prediction is wrong
        return False


def grade_math(gold: str, completion: str) -> dict:
    pred = extract_math_answer(completion)
    return {"pred": pred, "correct": math_equal(gold_math_answer(gold), pred)}


# ---- multiple choice (generative mode) ----------------------------------------------------------------------

def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The option letter a completion commits to, or None.

    Order of evidence: a boxed letter; "answer is (X)" / "Answer: X"; a completion that IS a letter ("B", "(B)",
    "B."); finally the last stand-alone capital letter among the options. Thinking models' <think> blocks are
    removed first, so letters mentioned while reasoning do not count.
    """
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()
    opts = re.escape(letters)
    for box in reversed(extract_boxed(text)):
        m = re.fullmatch(rf"\(?\s*(?:\\text\{{)?([{opts}])\}}?\s*\)?(?:[.:].*)?", box.strip())
        if m:
            return m.group(1)
    pats = [rf"answer\s*(?:is|:)?\s*(?:option\s*)?[:\s]*\(?\*{{0,2}}([{opts}])\b",
            rf"^\s*\(?([{opts}])\)?(?:[.:)]|\s|$)"]
    for pat in pats:
        found = re.findall(pat, text, flags=re.IGNORECASE | re.MULTILINE)
        found = [f.upper() for f in found if f.upper() in letters]
        if found:
            return found[-1] if pat is pats[0] else found[0]
    loose = re.findall(rf"\b([{opts}])\b", text)
    return loose[-1] if loose else None


# ---- statistics ---------------------------------------------------------------------------------------------

def mean_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr None below two values."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    mu = sum(values) / n
    if n < 2:
        return mu, None
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return mu, math.sqrt(var / n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per item, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


if __name__ == "__main__":
    completion, gold = sys.argv[1], sys.argv[2]
    print(grade_math(gold, completion))
