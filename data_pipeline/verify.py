"""Math answer checking with math-verify: `verify(parse(gold), parse(pred))`, gold first.

Gold answers are bare expressions ("18", "\\frac{1}{2}", "x^2+1"): math-verify's LaTeX extractor only reads
delimited math, so the gold is tried as \\boxed{answer}, then $answer$, then as is, and the first attempt that
yields a real (sympy) value is used. A gold for which none does is `gold_unparseable` and the prompt is dropped
before any generation. Responses are parsed whole (math-verify prefers the last \\boxed{}).

Verdicts: correct | incorrect | unparseable (no answer could be extracted) | empty.

    python -m data_pipeline.verify "18" "so the answer is \\boxed{18}"     # prints the verdict
"""

from __future__ import annotations

import sys

from math_verify import parse, verify


def _has_value(parsed: list) -> bool:
    return any(not isinstance(x, str) for x in parsed)


def parse_gold(answer: str) -> list:
    """Parsed gold answer, or [] when math-verify cannot turn it into a value."""
    a = answer.strip()
    inner = a.strip("$").strip()
    attempts = [a] if "\\boxed" in a else [f"\\boxed{{{inner}}}", f"${inner}$", a]
    for text in attempts:
        parsed = parse(text)
        if _has_value(parsed):
            return parsed
    return []


def check(gold_parsed: list, response: str) -> tuple[str, str]:
    """(verdict, detail) of one response against an already parsed gold."""
    if not response or not response.strip():
        return "empty", ""
    pred = parse(response)
    if not pred:
        return "unparseable", "no answer found in the response"
    detail = f"extracted {pred[-1]!s}"[:200]
    return ("correct", detail) if verify(gold_parsed, pred) else ("incorrect", detail)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m data_pipeline.verify <gold answer> <response>")
    g = parse_gold(sys.argv[1])
    print("gold_unparseable" if not g else check(g, sys.argv[2]))
