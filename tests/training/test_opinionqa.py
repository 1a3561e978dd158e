"""OpinionQA: the shipped processed file, its provenance record, the importer (synthetic and real data)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from service.training.datasets import PreferenceDataset
from service.training.jsonl import read_jsonl
from service.training.opinionqa import (
    CONTENTIOUS_TAG,
    GROUPS,
    import_opinionqa,
    import_opinionqa_to,
    load_opinionqa,
    shipped_opinionqa_path,
)

ALL_GROUPS = [g for gs in GROUPS.values() for g in gs]
NO_SPREAD = {"FAMSURV17_W50", "NEWSPREFV2_W45", "ORIENTATIONMOD_W50", "RESTRICTWHO_W45"}


def _assert_same(a: PreferenceDataset, b: PreferenceDataset) -> None:
    assert a.groups == b.groups
    assert a.questions == b.questions
    assert a.group_attributes == b.group_attributes
    for g in a.groups:
        assert a.dists[g].keys() == b.dists[g].keys()
        for q, v in a.dists[g].items():
            np.testing.assert_array_equal(v, b.dists[g][q])


# ------------------------------------------------------------------------------------ shipped file


def test_shipped_groups_and_attributes(opinionqa: PreferenceDataset) -> None:
    assert opinionqa.groups == ALL_GROUPS
    assert len(opinionqa.groups) == 17
    assert opinionqa.group_attributes == {g: a for a, gs in GROUPS.items() for g in gs}


def test_shipped_question_counts(opinionqa: PreferenceDataset) -> None:
    qs = opinionqa.questions
    assert len(qs) == 684
    assert [q.qid for q in qs] == sorted(q.qid for q in qs)
    assert all(q.is_ordinal for q in qs)
    assert {q.qid for q in qs if not q.has_ordinal_spread} == NO_SPREAD
    assert sum(CONTENTIOUS_TAG in q.tags for q in qs) == 179
    assert sum(CONTENTIOUS_TAG in q.tags for q in qs if q.has_ordinal_spread) == 177
    assert all(q.tags <= {CONTENTIOUS_TAG} for q in qs)
    assert len(opinionqa.complete_questions()) == 684


def test_shipped_distributions(opinionqa: PreferenceDataset) -> None:
    for g in opinionqa.groups:
        assert len(opinionqa.dists[g]) == 684
        for q in opinionqa.questions:
            d = opinionqa.dist(g, q.qid)
            assert d.shape == (q.n_options,)
            assert np.all(np.isfinite(d)) and np.all(d >= 0)
            assert d.sum() == pytest.approx(1.0, abs=1e-12)


def test_shipped_spot_values(opinionqa: PreferenceDataset) -> None:
    q = opinionqa.question("ABORTION_W32")
    assert q.options == ("legal in all or most cases", "illegal in all or most cases")
    assert q.ordinals == (1.0, 2.0)
    # POLICY3_W42: the counts key "noR" matches the option "nor" case-insensitively
    assert any("nor" in o for o in opinionqa.question("POLICY3_W42").options)
    assert all(opinionqa.dist(g, "POLICY3_W42").min() >= 0 for g in opinionqa.groups)


def test_provenance_hashes_match_shipped_file() -> None:
    path = shipped_opinionqa_path()
    raw = path.read_bytes()
    provenance = (path.parent / "PROVENANCE.md").read_text()
    hashes = re.findall(r"`([0-9a-f]{64})`", provenance)
    assert hashes == [hashlib.sha256(raw).hexdigest(), hashlib.sha256(gzip.decompress(raw)).hexdigest()]
    assert raw[4:8] == b"\0\0\0\0"  # deterministic gzip: mtime 0


def test_load_opinionqa_reads_the_shipped_file(opinionqa: PreferenceDataset) -> None:
    _assert_same(load_opinionqa(), opinionqa)


# ------------------------------------------------------------------------------ synthetic importer


def _write_wave(root: Path, wave: str, questions: list[dict], counts: dict[str, dict[str, dict]]) -> None:
    """A minimal ATP wave folder: info.csv plus one <ATTR>_data.json per attribute of GROUPS."""
    folder = root / f"American_Trends_Panel_{wave}"
    folder.mkdir(parents=True)
    with open(folder / "info.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["", "Unnamed: 0.1", "Unnamed: 0", "key", "option_mapping", "question", "references", "option_ordinal"]
        )
        for i, q in enumerate(questions):
            w.writerow([i, i, i, q["key"], "{}", q["question"], repr(q["references"]), repr(q["ordinals"])])
    for attr, groups in GROUPS.items():
        data = {}
        for q in questions:
            rec = {"MC_options": q["references"], "question_text": q["question"]}
            for g in groups + ["Refused"]:
                if g in counts.get(q["key"], {}):
                    rec[g] = counts[q["key"]][g]
            data[q["key"]] = rec
        (folder / f"{attr}_data.json").write_text(json.dumps(data))


@pytest.fixture
def fake_human_resp(tmp_path: Path) -> Path:
    root = tmp_path / "human_resp"
    q_a = {"key": "QA_W1", "question": "Safe?", "references": ["Very", "Not", "Refused"], "ordinals": [1.0, 2.0]}
    q_b = {
        "key": "QB_W1",
        "question": "Which, if any?",
        "references": ["Yes, I do", "nor this", "Refused"],
        "ordinals": [1.0, 1.0],
    }
    q_c = {"key": "QC_W1", "question": "Missing group", "references": ["x", "y", "Refused"], "ordinals": [1, 2]}
    counts: dict[str, dict[str, dict]] = {"QA_W1": {}, "QB_W1": {}, "QC_W1": {}}
    for i, g in enumerate(ALL_GROUPS):
        counts["QA_W1"][g] = {"Very": float(i + 1), "Not": 3.0, "Refused": 5.0}
        counts["QB_W1"][g] = {"Yes, I do": 1.0, "noR this": float(i)}  # case differs from the option text
        if g != "Asian":
            counts["QC_W1"][g] = {"x": 1.0}
    counts["QC_W1"]["Asian"] = {"Refused": 4.0}  # only a refusal: no positive count -> question dropped
    _write_wave(root, "W1", [q_c, q_b, q_a], counts)
    _write_wave(root, "W2", [{**q_a, "key": "QD_W2"}], {"QD_W2": counts["QA_W1"]})
    contentious = root / "Pew_American_Trends_Panel_disagreement_500"
    contentious.mkdir()
    (contentious / "info.csv").write_text("key,question\nQB_W1,x\nZZ_W9,y\n")
    return root


def test_import_synthetic(fake_human_resp: Path) -> None:
    ds = import_opinionqa(fake_human_resp)
    assert ds.groups == ALL_GROUPS
    assert ds.group_attributes["Asian"] == "RACE"
    assert [q.qid for q in ds.questions] == ["QA_W1", "QB_W1", "QD_W2"]  # sorted keys; QC_W1 dropped
    qa, qb = ds.question("QA_W1"), ds.question("QB_W1")
    assert qa.options == ("Very", "Not") and qa.ordinals == (1.0, 2.0) and qa.text == "Safe?"
    assert qb.options == ("Yes, I do", "nor this") and not qb.has_ordinal_spread
    assert qb.tags == {CONTENTIOUS_TAG} and qa.tags == frozenset()
    np.testing.assert_allclose(ds.dist("South", "QA_W1"), [2 / 5, 3 / 5])  # "Refused" dropped
    np.testing.assert_allclose(ds.dist("South", "QB_W1"), [1 / 2, 1 / 2])  # "noR this" matched
    np.testing.assert_allclose(ds.dist("Northeast", "QB_W1"), [1.0, 0.0])


def test_import_to_writes_a_readable_file(fake_human_resp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "oqa.jsonl.gz"
    out.parent.mkdir()
    ds = import_opinionqa_to(fake_human_resp, out)
    _assert_same(read_jsonl(out), ds)


def test_import_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="American_Trends_Panel_W"):
        import_opinionqa(tmp_path)


# ---------------------------------------------------------------------------------- real raw data


def test_import_of_raw_data_matches_shipped_file(
    human_resp: Path, opinionqa: PreferenceDataset, tmp_path: Path
) -> None:
    out = tmp_path / "opinionqa.jsonl.gz"
    ds = import_opinionqa_to(human_resp, out)
    _assert_same(ds, opinionqa)
    # same uncompressed bytes as the shipped file (the gzip bytes may depend on the zlib version)
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(shipped_opinionqa_path().read_bytes())
