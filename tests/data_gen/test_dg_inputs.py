"""generate's input: bytes that are not UTF-8, broken CSV quotes, content-hash ids, duplicate pairs (through the CLI)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nlicot.corpus import pair_id

HEADER = "premise,hypothesis,label\n"


def _generate(dg, flags, server, path, out):
    return dg("generate", "--input", path, "--output", out, *flags(server))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("rows.csv", HEADER.encode() + b"A man sleeps.,A man rests.,1\nCaf\xe9 owner,Someone works.,1\n",
         "rows.csv:3: not UTF-8 (byte 0xe9 at column 4)"),
        ("rows.jsonl", b'{"premise": "A.", "hypothesis": "B.", "label": 1}\n{"premise": "Caf\xe9", "hypothesis": "B", "label": 0}\n',
         "rows.jsonl:2: not UTF-8 (byte 0xe9 at column 17)"),
        ("rows.csv", (HEADER + "A man sleeps.,A man rests.,1\n\"A dog runs.,An animal moves.,1\n"
                      "A cat sits.,A cat stands.,0\nA boy reads.,A child reads.,1\n").encode(),
         "rows.csv:3: unbalanced quote"),
        ("rows.csv", (HEADER + "A man sleeps.,A man rests.,1\n\"A dog runs.,An animal moves.,1\n"
                      "A cat sits.,\"A cat stands.\",0\n").encode(),
         "rows.csv:3: unbalanced quote"),
        ("rows.csv", (HEADER + "A man sleeps.,\"A man\nrests.\",1\n\"A dog runs.,An animal moves.,1\n"
                      "A cat sits.,A cat stands.,0\n\"A boy\",\"reads\",1\n").encode(),
         "rows.csv:4: unbalanced quote"),
        ("rows.csv", (HEADER + "A man sleeps.,A man rests.,1,extra\n").encode(), "rows.csv:2: expected 3 fields"),
    ],
    ids=["csv-latin1", "jsonl-latin1", "csv-quote-to-eof", "csv-quote-closed-later", "csv-quote-after-multiline", "csv-extra-field"],
)
def test_bad_input_is_one_error_line_naming_file_and_line(dg, flags, fake_api, tmp_path, capsys, name, data, message):
    server = fake_api()
    path = tmp_path / name
    path.write_bytes(data)
    assert _generate(dg, flags, server, path, tmp_path / "out.jsonl") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in err and "Traceback" not in err, err
    assert server.counts["chat"] == 0 and not (tmp_path / "out.jsonl").exists()


def test_the_cli_process_reports_non_utf8_without_a_traceback(tmp_path, repo):
    path = tmp_path / "rows.csv"
    path.write_bytes(HEADER.encode() + b"Na\xefve premise,H.,1\n")
    proc = subprocess.run([sys.executable, "-m", "data_gen", "generate", "--input", str(path), "--output", str(tmp_path / "o.jsonl"),
                           "--server-url", "http://127.0.0.1:9"], capture_output=True, text=True, cwd=repo, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}:2: not UTF-8 (byte 0xef at column 3)"


def test_ids_are_content_hashes_that_survive_renaming_and_inserted_rows(dg, flags, fake_api, tmp_path, jsonl, caplog):
    server = fake_api()
    rows = [f"A child number {i} plays in a park.,A kid is outside.,{i % 2}\n" for i in range(6)]
    first = tmp_path / "rows.csv"
    first.write_text(HEADER + "".join(rows) + rows[2] + rows[4].replace("park.", "park.  "))  # two exact repeats
    out = tmp_path / "out.jsonl"
    assert _generate(dg, flags, server, first, out) == 0
    assert server.counts["chat"] == 6  # each pair asked about once
    assert "2 duplicate pair(s) kept once" in caplog.text and f"{first}:8 (same pair as {first}:2)" not in caplog.text
    assert f"{first}:8 (same pair as {first}:4)" in caplog.text
    done = {r["id"]: r for r in jsonl(out)}
    assert set(done) == {pair_id(f"A child number {i} plays in a park.", "A kid is outside.") for i in range(6)}

    renamed = tmp_path / "renamed.csv"
    renamed.write_text(HEADER + "A new first row.,Something.,0\n" + "".join(reversed(rows)))
    assert _generate(dg, flags, server, renamed, out) == 0
    assert server.counts["chat"] == 7  # only the inserted row is paid for
    assert len(jsonl(out)) == 7


def test_the_same_pair_with_another_label_is_an_error(dg, flags, fake_api, tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_text(HEADER + "A man sleeps.,A man rests.,1\nA man sleeps.,A man rests.,0\n")
    assert _generate(dg, flags, fake_api(), path, tmp_path / "out.jsonl") == 2
    assert f"{path}:3: same premise and hypothesis as {path}:2 but a different label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("data", "columns", "message"),
    [
        ("premise,hypothesis\nA.,B.\nC.,D.\nE.,F.\n", [], "no 'label' column; its columns are 'premise', 'hypothesis'"),
        ("s1,s2,gold\nA.,B.,1\nC.,D.,0\n", ["--columns", "{premise: s1, hypothesis: s2}"], "no 'label' column"),
        ("s1,s2,gold\nA.,B.,1\n", ["--columns", "{premise: s1, hypothesis: s2, label: y}"], "no 'y' (for label) column"),
    ],
)
def test_a_missing_column_is_one_error_line_not_one_per_row(dg, flags, fake_api, tmp_path, capsys, data, columns,
                                                            message):
    server = fake_api()
    (tmp_path / "rows.csv").write_text(data)
    assert dg("generate", "--input", tmp_path / "rows.csv", "--output", tmp_path / "o.jsonl", *columns, *flags(server)) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [line for line in err.splitlines() if "error:" in line]
    assert message in err and server.counts["chat"] == 0


def test_a_directory_as_input_is_one_error_line(dg, flags, fake_api, tmp_path, capsys):
    server = fake_api()
    (tmp_path / "rows").mkdir()
    assert _generate(dg, flags, server, tmp_path / "rows", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'rows'}: is a directory; give a CSV or JSONL file"
