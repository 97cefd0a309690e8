"""Bad corpus input: one clear error naming file and line, every problem at once; CLI exits 2 without traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nlicot.corpus import CorpusError, load_rows, pair_id

GOOD = {"id": "a", "premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 1,
        "thought_process": "step 1: x step 2: y step 3: entailment", "source": "initial"}


def write(tmp_path, lines: list[str], name: str = "c.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**GOOD, "label": 2}, "line 2: field 'label' must be 0 or 1, got 2"),
        ({k: v for k, v in GOOD.items() if k != "premise"}, "line 2: missing field 'premise'"),
        ({**GOOD, "hypothesis": "  "}, "line 2: field 'hypothesis' must be a non-empty string"),
        ({**GOOD, "thought_process": ""}, "line 2: field 'thought_process' must be a non-empty string"),
        ({**GOOD, "label": "yes"}, "line 2: field 'label' must be 0 or 1, got 'yes'"),
    ],
)
def test_row_errors_name_file_and_line(tmp_path, bad, message):
    path = write(tmp_path, [json.dumps(GOOD), json.dumps({**bad, "id": "b"})])
    with pytest.raises(CorpusError) as err:
        load_rows(str(path))
    assert f"{path}:2" in str(err.value) and message.split(": ", 1)[1] in str(err.value)


def test_broken_json_duplicate_ids_and_all_problems_at_once(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD), '{"premise": "oops"', json.dumps(GOOD), json.dumps({**GOOD, "id": "c", "label": 5})])
    with pytest.raises(CorpusError) as err:
        load_rows(str(path))
    text = str(err.value)
    assert "3 problem(s)" in text
    assert f"{path}:2: broken JSON line" in text
    assert f"{path}:3: duplicate id 'a' (first at {path}:1)" in text
    assert f"{path}:4: field 'label'" in text


def test_missing_file_and_csv_with_mapped_columns(tmp_path):
    with pytest.raises(CorpusError, match="nope.jsonl: file not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("pid,p,h,gold,cot\nx1,A dog.,An animal.,1,step 1: a step 2: b step 3: entailment\n"
                        "x2,A dog.,A cat.,7,step 1: a\n")
    cols = {"id": "pid", "premise": "p", "hypothesis": "h", "label": "gold", "thought_process": "cot"}
    with pytest.raises(CorpusError, match=r"c\.csv:3: field 'gold' must be 0 or 1"):
        load_rows(str(csv_path), columns=cols)
    csv_path.write_text("pid,p,h,gold,cot\nx1,A dog.,An animal.,1,step 1: a step 2: b step 3: entailment\n")
    (row,) = load_rows(str(csv_path), columns=cols)
    assert row["label"] == 1 and row["id"] == "x1" and row["thought_process"].startswith("step 1")


def test_saved_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list([GOOD, {**GOOD, "id": "b", "label": 0}]).save_to_disk(str(tmp_path / "ds"))
    rows = load_rows(str(tmp_path / "ds"))
    assert [r["label"] for r in rows] == [1, 0]


def test_predict_inputs_need_no_label_or_thought(tmp_path):
    path = write(tmp_path, [json.dumps({"premise": "A.", "hypothesis": "B."})])
    (row,) = load_rows(str(path), require_thought=False, require_label=False)
    assert row["label"] is None and row["id"] == "c.jsonl:1"


@pytest.mark.slow
def test_cli_reports_bad_corpus_without_traceback(tmp_path, repo):
    path = write(tmp_path, [json.dumps(GOOD), json.dumps({**GOOD, "id": "b", "label": 3})])
    proc = subprocess.run(
        [sys.executable, "-m", "nlicot", "fit", "--config", str(repo / "configs/demo_handwritten.yaml"),
         f"--data.train_path={path}", f"--data.val_path={repo / 'data/demo/val.jsonl'}",  # cwd is tmp_path
         f"--checkpoint.dirpath={tmp_path / 'ck'}",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error: 1 problem(s) in {path}" in proc.stderr and f"{path}:2: field 'label'" in proc.stderr
    assert not (tmp_path / "ck").exists()


def test_a_byte_that_is_not_utf8_is_named_by_line_and_column(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + json.dumps({**GOOD, "id": "b"}).encode()[:20] + b"\xe9\xe9\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: not UTF-8 \(byte 0xe9 at column 21\)"):
        load_rows(str(path))
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")  # a BOM is not an error
    assert load_rows(str(path))[0]["id"] == "a"


def test_an_unbalanced_csv_quote_is_reported_where_it_opened(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,premise,hypothesis,label,thought_process\nx1,A dog.,An animal.,1,t\n'
                    'x2,"A dog.,A cat.,0,t\nx3,A cat.,An animal.,1,t\nx4,A cow.,"An animal.",1,t\n')
    with pytest.raises(CorpusError, match=r"c\.csv:3: unbalanced quote"):
        load_rows(str(path))


def test_content_ids_ignore_file_name_position_and_whitespace_and_keep_a_pair_once(tmp_path):
    rows = [{"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 1},
            {"premise": "A dog barks.", "hypothesis": "A dog is silent.", "label": 0}]
    a = write(tmp_path, [json.dumps(r) for r in rows], "a.jsonl")
    b = write(tmp_path, [json.dumps({"premise": "New.", "hypothesis": "Row.", "label": 0}),
                         *(json.dumps(r) for r in reversed(rows)),
                         json.dumps({**rows[0], "premise": " A cat\n sleeps. "})], "b.jsonl")
    ids_a = [r["id"] for r in load_rows(str(a), require_thought=False, content_ids=True)]
    read_b = load_rows(str(b), require_thought=False, content_ids=True)
    assert ids_a == [pair_id(r["premise"], r["hypothesis"]) for r in rows] and len(read_b) == 3
    assert {r["id"] for r in read_b} >= set(ids_a) and read_b[2]["also_at"] == [f"{b}:4"]
    assert pair_id("A cat sleeps.", "An animal rests.") != pair_id("a cat sleeps.", "An animal rests.")  # case counts
    assert [r["id"] for r in load_rows(str(a), require_thought=False)] == ["a.jsonl:1", "a.jsonl:2"]  # nlicot's default
