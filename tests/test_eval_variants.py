"""Data variants are said where the numbers are: a 5-option MedQA, a PubMedQA file that is not the 500-item test
fold, and CLUEWSC on CLUE dev with our prompt carry settings.data_note; PubMedQA's 1,000-item ori_pqal.json is
refused before any model work, in log-likelihood and generative mode. Fast tier (tiny model, fixtures)."""

import json

import pytest
from hydra import compose, initialize_config_dir

from evaluation import evaluate as ev
from evaluation.benchmarks import with_declared
from evaluation.sources import DataFormatError, data_note
from tests.conftest import REPO
from tests.test_eval_cli import FIXTURES

F = REPO / "tests" / "fixtures" / "eval"


def main(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("eval", overrides=with_declared([f"out_dir={tmp_path / 'metrics'}", "progress=false", "model_spec=tiny",
                                         "max_new_tokens=4", *FIXTURES, *overrides]))
    return ev.main(cfg)


def full_pqal(tmp_path):
    """A file shaped like ori_pqal.json: 1,000 items keyed by PMID (the fixture's items repeated)."""
    rows = list(json.loads((F / "pubmedqa/ori_pqal.json").read_text()).values())
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps({str(10_000 + i): rows[i % len(rows)] for i in range(1000)}))
    return path


@pytest.mark.parametrize("mode", ["loglikelihood", "generate"])
def test_pubmedqa_full_pqal_is_refused(tmp_path, monkeypatch, mode):
    import evaluation.generative as gen

    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("generated before the data check"))
    path = full_pqal(tmp_path)
    with pytest.raises(DataFormatError, match=rf"{path.name}: 1000 items: .*ori_pqal.json.*refuse_items=null"):
        main(tmp_path, "benchmarks=[pubmedqa]", f"bench.pubmedqa.local.data_files.test={path}",
             f"bench.pubmedqa.mode={mode}")
    assert not (tmp_path / "metrics/tiny/pubmedqa.json").exists()


def test_variant_notes_in_the_results(tmp_path):
    r = main(tmp_path, "benchmarks=[medqa,pubmedqa,cluewsc]", "limit=2")
    assert "5 options: not comparable to medqa_4options" in r["medqa"]["settings"]["data_note"]
    assert "3 items: not the 500 of PQA-L test fold" in r["pubmedqa"]["settings"]["data_note"]
    assert "not OpenCompass's FewCLUE" in r["cluewsc"]["settings"]["data_note"]


def test_generative_medqa_says_its_variant(tmp_path, monkeypatch):
    import evaluation.generative as gen

    monkeypatch.setattr(gen, "generate", lambda model, convs, **kw: [["B"] for _ in convs])
    r = main(tmp_path, "benchmarks=[medqa]", "bench.medqa.mode=generate")["medqa"]
    assert r["settings"]["variant"] == "5 options" and "not comparable" in r["settings"]["data_note"]


def test_reference_variant_has_no_note():
    medqa = {"name": "medqa", "reference_variant": {"n_options": 4, "name": "medqa_4options"}}
    assert data_note(medqa, 1273, 4) is None
    pub = {"name": "pubmedqa", "reference_variant": {"n_items": 500, "name": "PQA-L test fold"}}
    assert data_note(pub, 500) is None and data_note(pub, 3) == "3 items: not the 500 of PQA-L test fold"
