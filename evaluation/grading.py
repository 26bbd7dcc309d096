"""Answer extraction and grading for generated answers: thinking outputs, math (math-verify), multiple choice,
and the statistics.

    python -m evaluation.grading "The answer is \\boxed{\\frac{1}{2}}." 0.5      # -> extracted, correct

Thinking models (`thinking: true` in configs/model/*.yaml): the answer is the text after the LAST `</think>`.
Qwen3-Thinking-2507's template puts the opening `<think>` in the prompt, so a completion holds only the closing
tag. A completion that never closes its reasoning within the token budget has no answer: it is graded wrong and
counted (`metrics.unterminated_reasoning`), never scored on its reasoning. Every generative benchmark (math,
generative multiple choice, IFEval through lm-eval's filter `final_answers`) goes through `final_answer`.

Math follows the Qwen2.5-Math evaluation the paper used: the answer is the content of the LAST \\boxed{} (or
\\fbox{}) in the completion, braces matched so nested ones survive. Without a box, math-verify's own extraction
reads the completion (`math_verify.parse` with its LaTeX and expression configs: "final answer is" / "answer:"
anchors first, then the last LaTeX or number), so "The answer is: **42**" gives 42 and an unboxed
`$\\frac{1}{2}$` gives 1/2. Gold and prediction are compared with `verify(parse(gold), parse(pred))`, gold first
(the order matters to math-verify: the gold decides which interpretations count).

Multiple choice (generative mode) follows lm-eval's conventions for generated letters (its MMLU/GPQA CoT tasks:
case-sensitive capital letters, "The answer is (X)", a parenthesised "(X)"), see `extract_choice`.
"""

from __future__ import annotations

import math
import re
import sys

THINK_END = "</think>"


def final_answer(text: str, thinking: bool) -> str | None:
    """The part of a completion that is graded.

    thinking=True (the model's config says it thinks): the text after the last `</think>`, or None when the
    reasoning was never closed (cut off by the budget) -- such an output has no answer. thinking=False: the text
    without paired <think>...</think> blocks (a hybrid model may still write one)."""
    if thinking:
        return text.rsplit(THINK_END, 1)[1].strip() if THINK_END in text else None
    return re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()


def final_answers(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval `custom` filter for thinking models' generated tasks (IFEval): each response becomes its final
    answer, and an unterminated one the empty string, which IFEval's checker fails on every instruction."""
    return [[final_answer(r, thinking=True) or "" for r in rs] for rs in resps]


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


def _extract_math(text: str) -> tuple[list, str | None]:
    """(math-verify parse, answer string) of a completion: the last box, else math-verify's own extraction."""
    boxes = extract_boxed(text)
    if boxes:
        return _parse(boxes[-1]), boxes[-1]
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    parsed = parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])
    # parse returns [sympy object(s)..., the matched string]; markdown bold around a number stays in the match
    return parsed, (str(parsed[-1]).strip("*$ ") or None) if parsed else None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a completion: the last box, else what math-verify extracts, else None."""
    return _extract_math(text)[1]


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


def _verify(gold: str, pred_parsed: list) -> bool:
    from math_verify import verify

    g = _parse(gold)
    if not g:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}; fix the data file")
    if not pred_parsed:
        return False
    try:
        return bool(verify(g, pred_parsed))
    except Exception:  # noqa: BLE001 -- math-verify raises on exotic expressions; an unreadable prediction is wrong
        return False


def math_equal(gold: str, pred: str | None) -> bool:
    if pred is None or not str(pred).strip():
        _verify(gold, [])  # still reject an unreadable gold: that is a data error, not a wrong answer
        return False
    return _verify(gold, _parse(pred))


def grade_math(gold: str, completion: str | None) -> dict:
    """{pred, correct}; completion None (unterminated reasoning) is wrong with no prediction."""
    if completion is None:
        return {"pred": None, "correct": math_equal(gold_math_answer(gold), None)}
    parsed, pred = _extract_math(completion)
    return {"pred": pred, "correct": _verify(gold_math_answer(gold), parsed)}


# ---- multiple choice (generative mode) ----------------------------------------------------------------------

def extract_choice(text: str | None, letters: str = "ABCD") -> str | None:
    """The option letter a completion commits to, or None.

    Letters are capitals, matched case-sensitively (lm-eval's generated-MCQ filters do the same), so the article
    "a" and a sentence starting "A patient ..." are not answers. Order of evidence:
      1. a boxed letter, \\boxed{B} (the last one);
      2. "answer is B" / "Answer: (B)" / "answer is option **B**" (the last one); a lower-case letter counts here
         only when it stands alone at the end of the line ("Answer: c");
      3. a line that IS a letter: "B", "(B)", "B.", "B: text" (the first such line);
      4. a parenthesised "(B)" anywhere (the last one, lm-eval's flexible extract);
      5. a completion that ends in the letter ("... so B.").
    Nothing else: a letter that only appears inside an explanation is no answer. Paired <think> blocks are removed
    first; thinking models' outputs are cut at </think> by `final_answer` before they get here.
    """
    if text is None:
        return None
    text = final_answer(text, thinking=False)
    opt, low = f"[{re.escape(letters)}]", f"[{re.escape(letters.lower())}]"
    for box in reversed(extract_boxed(text)):
        m = re.fullmatch(rf"\(?\s*(?:\\text\{{)?({opt})\}}?\s*\)?(?:[.:].*)?", box.strip())
        if m:
            return m.group(1)
    anchor = r"(?i:answer)\s*(?:is|:)?\s*(?:(?i:option)\s*)?[:\s]*\**\(?\**"
    found = [(m.start(), m.group(1)) for m in re.finditer(rf"{anchor}({opt})\b", text)]
    found += [(m.start(), m.group(1).upper())
              for m in re.finditer(rf"{anchor}({low})\)?\**[.)]?[ \t]*$", text, flags=re.MULTILINE)]
    if found:
        return max(found)[1]
    line = re.search(rf"^[ \t]*\**\(?({opt})\)?\**(?:[.:)]|[ \t]*$)", text, flags=re.MULTILINE)
    if line:
        return line.group(1)
    paren = re.findall(rf"\(({opt})\)", text)
    if paren:
        return paren[-1]
    end = re.search(rf"\b({opt})\)?\**[.!]?\s*$", text)
    return end.group(1) if end else None


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
