import json

import pytest
from conftest import write_jsonl

from migaki.config import DataConfig
from migaki.data import load_splits, read_records, split_examples, to_examples
from migaki.data.load import scan_records
from migaki.errors import DataError

CHAT = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n{oops\n")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value).startswith(f"{path}:3: invalid JSON")


def test_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps(CHAT) + "\n")
    assert [r.line for r in read_records(path)] == [1, 3]


def test_bom_is_accepted_and_bad_utf8_is_located(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\n")
    assert len(read_records(path)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(CHAT).encode() + b"\n" + b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_records(bad)


def test_non_object_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r":1: expected a JSON object, got list"):
        read_records(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.docx").write_text("hi")
    with pytest.raises(DataError, match="unknown data file type"):
        read_records(tmp_path / "x.docx")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        read_records(tmp_path / "empty.jsonl")


def test_csv_tsv_json_parquet(tmp_path):
    (tmp_path / "d.csv").write_text('prompt,completion\n"Hi, there",Hello\nQ2,A2\n')
    (tmp_path / "d.tsv").write_text("instruction\tinput\toutput\nDo\t\tDone\n")
    (tmp_path / "d.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([CHAT, CHAT]), tmp_path / "d.parquet")
    csv_rows = read_records(tmp_path / "d.csv")
    assert csv_rows[0].fields == {"prompt": "Hi, there", "completion": "Hello"}
    assert csv_rows[1].line == 3
    assert to_examples(read_records(tmp_path / "d.tsv"))[0].messages[0]["content"] == "Do"
    assert [e.text for e in to_examples(read_records(tmp_path / "d.json"))] == ["one", "two"]
    assert to_examples(read_records(tmp_path / "d.parquet"))[1].reference == "A"


def test_plain_text_rows_are_paragraphs_or_lines(tmp_path):
    path = tmp_path / "manual.md"
    path.write_text("# Kettle\r\nIt boils.\n\n\n  \nClean it weekly.\n\n湯を沸かす。\n")
    paragraphs = read_records(path)
    assert [(r.line, r.fields) for r in paragraphs] == [
        (1, {"text": "# Kettle\nIt boils."}),
        (6, {"text": "Clean it weekly."}),
        (8, {"text": "湯を沸かす。"}),
    ]
    lines = read_records(path, text_unit="line")
    assert [r.line for r in lines] == [1, 2, 6, 8]
    assert [e.text for e in to_examples(lines)][:2] == ["# Kettle", "It boils."]


def test_plain_text_bad_line_is_located_and_splits_its_paragraph(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"one\ntwo\n\xff\nthree\n")
    scan = scan_records(path)
    assert [str(p) for p in scan.problems] == [f"{path}:3: not valid UTF-8 (byte 0xff at column 1)"]
    assert [(r.line, r.fields["text"]) for r in scan.records] == [(1, "one\ntwo"), (4, "three")]


def test_a_text_file_without_blank_lines_is_one_paragraph_and_says_so(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"sentence {i}.\n" for i in range(5)))
    scan = scan_records(path)
    assert len(scan.records) == 1
    assert scan.notes == [
        "no blank line in 5 lines, so the whole file is one row "
        "(data.text_unit: line makes each line a row)"
    ]
    assert len(scan_records(path, text_unit="line").records) == 5


def test_csv_extra_field_is_located(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\nq,a\nq,a,extra\n")
    with pytest.raises(DataError, match=r"d\.csv:3: more fields"):
        read_records(tmp_path / "d.csv")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (CHAT, [("user", "Q"), ("assistant", "A")]),
        (
            {"instruction": "Sum", "input": "1 2", "output": "3"},
            [("user", "Sum\n\n1 2"), ("assistant", "3")],
        ),
        (
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "Q"},
                    {"from": "gpt", "value": "A"},
                ]
            },
            [("system", "S"), ("user", "Q"), ("assistant", "A")],
        ),
        ({"prompt": "Q", "completion": "A"}, [("user", "Q"), ("assistant", "A")]),
    ],
)
def test_formats_become_messages(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    [example] = to_examples(read_records(path))
    assert [(m["role"], m["content"]) for m in example.messages] == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": []}, "conversation has no turns"),
        ({"messages": [{"role": "user", "content": "Q"}]}, "no assistant turn"),
        ({"messages": [{"role": "assistant", "content": "A"}]}, "must start with a user turn"),
        (
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]},
            "has no 'content' text",
        ),
        ({"messages": [{"role": "robot", "content": "Q"}]}, "has role 'robot'"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Q"},
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A"},
                ]
            },
            "two user turns in a row",
        ),
        (
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]},
            "assistant turn is empty",
        ),
        ({"prompt": "Q"}, "cannot tell the format"),
    ],
)
def test_malformed_rows_name_line_and_problem(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, row])
    with pytest.raises(DataError) as err:
        to_examples(read_records(path))
    assert "d.jsonl:2: " in str(err.value) and message in str(err.value)


def test_empty_field_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "", "output": "A"}])
    with pytest.raises(DataError, match=r":1: field 'instruction' is empty"):
        to_examples(read_records(path))


def test_forced_format_reports_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "completion": "A"}, {"prompt": "Q"}])
    with pytest.raises(DataError, match=r":2: missing field 'completion'"):
        to_examples(read_records(path), "prompt_completion")


def test_extra_fields_are_kept_as_meta(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**CHAT, "facts": ["A"], "lang": "en"}])
    [example] = to_examples(read_records(path))
    assert example.meta == {"facts": ["A"], "lang": "en"}


def test_split_is_seeded_and_complete(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(100)])
    examples = to_examples(read_records(path))
    first = split_examples(examples, 0.1, 0.2, seed=7)
    again = split_examples(examples, 0.1, 0.2, seed=7)
    other = split_examples(examples, 0.1, 0.2, seed=8)
    texts = lambda split: [e.text for e in split]  # noqa: E731
    assert [texts(s) for s in first] == [texts(s) for s in again]
    assert texts(first[2]) != texts(other[2])
    assert [len(s) for s in first] == [70, 10, 20]
    assert sorted(t for s in first for t in texts(s)) == sorted(e.text for e in examples)


def test_explicit_val_and_test_files_are_not_split_from_train(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}"} for i in range(10)])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "v"}])
    splits = load_splits(DataConfig(train=str(train), val=str(val)), seed=1)
    assert len(splits.val) == 1 and len(splits.test) == 1 and len(splits.train) == 9
    assert set(splits.hashes) == {str(train), str(val)}


def test_mixed_formats_are_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, {"prompt": "Q", "completion": "A"}])
    with pytest.raises(DataError, match=r":2: mixed formats: this row is prompt_completion"):
        to_examples(read_records(path))
