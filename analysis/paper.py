"""The paper's published numbers (paper/results.csv) and its tables' layouts (paper/tables.yaml), and checks of
the numbers' arithmetic.

    python -m analysis.paper          # prints every printed average and delta that disagrees with its cells

paper/results.csv (transcribed from arXiv 2601.02151 Tables 1-3 and Figs. 5-6; one value per line):
    artifact  table1 | table2 | table3 | fig5 | fig6
    model     our model config name (qwen3-4b = Qwen3-4B-Instruct-2507, qwen3-4b-thinking, qwen2.5-32b, glm4-9b)
    method    our method config name (base, sft, sft_kl, flow, dft, talr, eaft, masked_sft, eaft_sig, eaft2, eaft3)
    column    a benchmark (aime24, mmlu, ...); printed_target_avg / printed_general_avg / printed_general_delta
              (the averages and delta as the paper prints them); fig5: general / target (positions read off the
              figure) and target_text; fig6: pearson_k<K>, memory_kb_k<K>
    value, note
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.declarations import paper_tables
from common.files import REPO

PAPER_CSV = REPO / "paper" / "results.csv"
# Cells and printed averages are rounded to 0.1, so an honest average can be off by up to 0.05 + 0.05.
AVG_TOLERANCE = 0.1 + 1e-9
DELTA_TOLERANCE = 0.05 + 1e-9  # printed avg and printed delta share one rounding


@dataclass(frozen=True)
class Layout:
    """One paper table as paper/tables.yaml declares it."""
    title: str
    domain: str
    file: str
    models: dict  # model config name -> the paper's name for it
    methods: list
    target: list
    general: list
    target_avg: str | None  # the average column's header; None for a one-benchmark domain


def layouts() -> dict[str, Layout]:
    """{table id: Layout} from paper/tables.yaml (common.declarations)."""
    keys = Layout.__dataclass_fields__
    return {tid: Layout(**{k: v for k, v in t.items() if k in keys})
            for tid, t in paper_tables()["tables"].items()}


def load_paper(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the paper's numbers are missing (it is committed with the repository)")
    df = pd.read_csv(path, dtype={"note": str}, keep_default_na=False, na_values={"value": [""]})
    missing = {"artifact", "model", "method", "column", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return df


def paper_cells(paper: pd.DataFrame, artifact: str) -> pd.DataFrame:
    """(model, method) x column table of one artifact's numbers, in the paper's row order."""
    d = paper[paper["artifact"] == artifact]
    if d.empty:
        raise KeyError(f"no rows for artifact {artifact!r} in the paper's numbers")
    return d.pivot_table(index=["model", "method"], columns="column", values="value", sort=False)


def consistency(paper: pd.DataFrame, layouts: dict) -> pd.DataFrame:
    """Every printed average / delta next to what the paper's own cells give; `flag` marks disagreements.

    `layouts`: {artifact: object with .target and .general benchmark lists} (layouts())."""
    rows = []
    for art, lay in layouts.items():
        t = paper_cells(paper, art)
        for (model, method), r in t.iterrows():
            base = t.loc[(model, "base")]
            for kind, benches in (("target", lay.target), ("general", lay.general)):
                printed = r.get(f"printed_{kind}_avg")
                if printed is None or pd.isna(printed):
                    continue
                cells = r[benches].mean()
                rows.append({"artifact": art, "model": model, "method": method, "quantity": f"{kind} avg",
                             "printed": printed, "from_cells": round(cells, 4),
                             "flag": abs(cells - printed) > AVG_TOLERANCE})
            delta = r.get("printed_general_delta")
            if delta is not None and not pd.isna(delta):
                implied = r["printed_general_avg"] - base["printed_general_avg"]
                rows.append({"artifact": art, "model": model, "method": method,
                             "quantity": "general delta vs printed avgs", "printed": delta,
                             "from_cells": round(implied, 4), "flag": abs(implied - delta) > DELTA_TOLERANCE})
    return pd.DataFrame(rows, columns=["artifact", "model", "method", "quantity", "printed", "from_cells", "flag"])


if __name__ == "__main__":
    c = consistency(load_paper(), layouts())
    print(f"{len(c)} printed averages/deltas checked; disagreements (tolerance {AVG_TOLERANCE:.2f}):")
    print(c[c["flag"]].to_string(index=False))
