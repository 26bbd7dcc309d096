"""Does a re-run reproduce the committed reference? Each headline number of an experiment's summary.json beside
the reference's, with whether they agree within their combined standard error.

    python -m experiments.agreement results/demo/summary.json            # against the committed (git HEAD) version
    python -m experiments.agreement mine/summary.json ref/summary.json   # two files

The runner (experiments/runner.py) calls this after any invocation that trained or evaluated something: a
`make demo` or `make study` on another machine then says, next to its own numbers, which headline differences
agree with the committed ones, and under which precision and library versions each side was made. The run has
replaced the committed files in the working tree; `git diff` shows them, and the note printed with the table says
how to keep (commit) or discard (restore) them.

Agreement: |mine - reference| <= 2 sqrt(SE_mine^2 + SE_reference^2). Runs scored on the same items share their item
noise, so this treats them as independent and is conservative: a difference it calls a disagreement is real.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from common.files import REPO, atomic_write_text, repo_relative

Z = 2.0


def committed(path: Path) -> dict | None:
    """The file as the checkout's HEAD commit holds it (None outside a git checkout or when not committed)."""
    rel = repo_relative(path)
    if Path(rel).is_absolute():
        return None
    try:
        out = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{rel}"], capture_output=True, text=True,
                             check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return json.loads(out.stdout) if out.returncode == 0 else None


def reference(path: Path, before_run: dict | None) -> tuple[dict | None, str]:
    """(reference summary, where it came from): the committed version, else the file as this run found it."""
    ref = committed(path)
    if ref is not None:
        return ref, f"{repo_relative(path)} at git HEAD"
    return before_run, f"{repo_relative(path)} as found before this run"


def compare(ref: list[dict], mine: list[dict]) -> list[dict]:
    """One row per headline in either: both values and SEs, the difference, its combined SE and the verdict
    (agrees | differs | not comparable: a side lacks the number or its SE)."""
    by_ref, by_mine = {h["name"]: h for h in ref}, {h["name"]: h for h in mine}
    rows = []
    for name in [*by_mine, *[n for n in by_ref if n not in by_mine]]:
        r, m = by_ref.get(name), by_mine.get(name)
        row = {"name": name, "reference": r and r.get("value"), "reference_se": r and r.get("se"),
               "mine": m and m.get("value"), "mine_se": m and m.get("se")}
        if None in (row["reference"], row["mine"], row["reference_se"], row["mine_se"]):
            row |= {"diff": None, "combined_se": None, "verdict": "not comparable"}
        else:
            se = math.sqrt(row["reference_se"] ** 2 + row["mine_se"] ** 2)
            diff = row["mine"] - row["reference"]
            row |= {"diff": diff, "combined_se": se,
                    "verdict": "agrees" if abs(diff) <= Z * se else "differs"}
        rows.append(row)
    return rows


def _f(x, d=3):
    return "–" if x is None else f"{x:+.{d}f}"


def _env(e: dict | None) -> str:
    if not e:
        return "not recorded"
    return f"{e.get('precision')}, " + ", ".join(f"{k} {v}" for k, v in (e.get("packages") or {}).items())


def render(rows: list[dict], ref: dict, mine: dict, ref_where: str, keep: list[str]) -> str:
    agree = sum(r["verdict"] == "agrees" for r in rows)
    differ = [r["name"] for r in rows if r["verdict"] == "differs"]
    lines = ["# Your run against the committed reference", "",
             f"Reference: {ref_where}; made under {_env(ref.get('environment'))}.",
             f"Yours: made under {_env(mine.get('environment'))}.", "",
             (f"**{agree} of {len(rows)} headline numbers agree within {Z:g} combined SE"
              + (f"; these differ: {', '.join(differ)}.**" if differ else ".**")), "",
             "| headline | reference | yours | yours − reference | combined SE | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {_f(r['reference'])} ± {_f(r['reference_se']).lstrip('+')} | {_f(r['mine'])} ± "
              f"{_f(r['mine_se']).lstrip('+')} | {_f(r['diff'])} | {_f(r['combined_se']).lstrip('+')} | "
              f"{r['verdict']} |" for r in rows]
    paths = " ".join(keep)
    lines += ["", ("Combined SE = sqrt(SE_yours² + SE_reference²), treating the two runs as independent (they share "
                   "their evaluation items, so this is conservative)."), "",
              "Your run has replaced the committed files in the working tree (`git status`, `git diff` show them).",
              f"- keep it as the new reference: `git add {paths} && git commit`",
              f"- discard it: `git restore --staged --worktree {paths} && git clean -fd {paths}`"]
    return "\n".join(lines) + "\n"


def report(summary_path: Path, before_run: dict | None, keep: list[str]) -> dict | None:
    """Compare the summary this invocation wrote with the reference; write <its folder>/agreement.md and print it.
    Nothing is written when there is no reference or the summaries are identical (a re-render)."""
    mine = json.loads(summary_path.read_text())
    ref, where = reference(summary_path, before_run)
    if ref is None or ref == mine:
        return None
    rows = compare(ref.get("headlines") or [], mine.get("headlines") or [])
    text = render(rows, ref, mine, where, keep)
    atomic_write_text(summary_path.parent / "agreement.md", text)
    print("\n" + text, flush=True)
    return {"rows": rows, "file": str(summary_path.parent / "agreement.md")}


if __name__ == "__main__":
    mine_path = Path(sys.argv[1])
    ref_doc = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else committed(mine_path)
    if ref_doc is None:
        sys.exit(f"{mine_path}: no committed version to compare with; name a reference file")
    print(render(compare(ref_doc.get("headlines") or [], json.loads(mine_path.read_text()).get("headlines") or []),
                 ref_doc, json.loads(mine_path.read_text()), sys.argv[2] if len(sys.argv) > 2 else "git HEAD",
                 [str(mine_path.parent)]))
