"""Data files as users hand them over: compressed, UTF-16, empty, or not a readable file at all.

Each is read as the plain UTF-8 file would be (same rows, same line numbers), or refused with a
line naming the file and saying why.
"""

import bz2
import gzip
import hashlib
import json
import lzma
import os
import sys

import pytest
from conftest import run_cli

from migaki.data import load
from migaki.data.load import file_hash, read_records, scan_records
from migaki.errors import DataError

ROWS = [{"text": "一行目 first"}, {"text": "second"}, {"text": "third"}]
# a blank line 3 and a broken row 5, so line numbers are checked, not only the rows
PLAIN = "\n".join([json.dumps(ROWS[0]), json.dumps(ROWS[1]), "", json.dumps(ROWS[2]), "{oops"])
PLAIN_BYTES = (PLAIN + "\n").encode("utf-8")


def rows_and_problems(path) -> tuple[list[tuple[int, dict]], list[tuple[int | None, str]]]:
    scan = scan_records(path)
    rows = [(record.line, record.fields) for record in scan.records]
    return rows, [(problem.line, problem.kind) for problem in scan.problems]


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_bytes(PLAIN_BYTES)
    return rows_and_problems(path)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
@pytest.mark.parametrize("name", ["train.jsonl.gz", "train.jsonl", "train.jsonl.bz2"])
def test_compressed_files_read_as_the_plain_file_whatever_their_name(
    tmp_path, plain, compress, name
):
    path = tmp_path / name
    path.write_bytes(compress(PLAIN_BYTES))
    assert plain[0] == [(1, ROWS[0]), (2, ROWS[1]), (4, ROWS[2])]
    assert rows_and_problems(path) == plain
    assert str(scan_records(path).problems[0]).startswith(f"{path}:5: invalid JSON")


@pytest.mark.parametrize("suffix", [".csv", ".txt", ".json"])
def test_compressed_csv_text_and_json_keep_their_format(tmp_path, suffix):
    content = {
        ".csv": "text,label\ngood,pos\nbad,neg\n",
        ".txt": "first paragraph\n\nsecond paragraph\n",
        ".json": json.dumps(ROWS),
    }[suffix]
    (tmp_path / f"d{suffix}").write_text(content, encoding="utf-8")
    (tmp_path / f"d{suffix}.gz").write_bytes(gzip.compress(content.encode()))
    plain = read_records(tmp_path / f"d{suffix}")
    assert [(r.line, r.fields) for r in read_records(tmp_path / f"d{suffix}.gz")] == [
        (r.line, r.fields) for r in plain
    ]


def test_validate_reads_a_gzip_file_named_jsonl(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    code, out, _ = run_cli(capsys, "data", "validate", path)
    assert code == 0, out
    assert f"{path}: 3 rows, 3 valid, format text" in out


def test_a_damaged_compressed_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(PLAIN_BYTES)[:20])
    with pytest.raises(DataError, match=r"train\.jsonl\.gz: gzip-compressed, but cannot be"):
        scan_records(path)


def test_zstd_without_the_zstandard_package_is_refused_saying_how_to_decompress(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails as if not installed
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    with pytest.raises(DataError) as error:
        scan_records(path)
    assert str(error.value) == (
        f"{path}: zstd-compressed, and the zstandard package that reads it is not installed: "
        f"decompress it first (zstd -d {path}) and give the decompressed file"
    )


def test_zstd_is_read_when_zstandard_is_installed(tmp_path, plain):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(PLAIN_BYTES))
    assert rows_and_problems(path) == plain


def test_the_hash_of_a_compressed_file_is_that_of_its_bytes(tmp_path):
    # resume compares this hash with the one recorded; it must not depend on decompressing
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(PLAIN_BYTES))
    assert file_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("bom", "codec"),
    [
        (b"\xff\xfe", "utf-16-le"),
        (b"\xfe\xff", "utf-16-be"),
        (b"\xff\xfe\x00\x00", "utf-32-le"),
        (b"\x00\x00\xfe\xff", "utf-32-be"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"],
)
def test_utf16_and_utf32_files_read_as_the_utf8_file(tmp_path, plain, bom, codec):
    path = tmp_path / "train.jsonl"
    path.write_bytes(bom + (PLAIN + "\n").encode(codec))
    assert rows_and_problems(path) == plain
    assert any("byte-order mark" in note for note in scan_records(path).notes)


def test_validate_reads_a_utf16_csv(tmp_path, capsys):
    path = tmp_path / "sheet.csv"
    path.write_bytes("text,label\r\nよい,pos\r\nわるい,neg\r\n".encode("utf-16"))
    code, out, _ = run_cli(capsys, "data", "validate", path)
    assert code == 0, out
    assert f"{path}: 2 rows, 2 valid, format classification" in out
    assert [r.fields["text"] for r in read_records(path)] == ["よい", "わるい"]


def test_a_broken_utf16_file_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xff\xfe" + (json.dumps(ROWS[0]) + "\n\n").encode("utf-16-le") + b"\x00\xdc")
    problems = scan_records(path).problems
    assert [(p.line, p.kind) for p in problems] == [(3, "invalid_encoding")]
    assert str(problems[0]).startswith(f"{path}:3: not valid UTF-16")


def test_a_directory_is_not_a_data_file(tmp_path):
    folder = tmp_path / "train.jsonl"
    folder.mkdir()
    with pytest.raises(DataError) as error:
        read_records(folder)
    assert str(error.value) == f"{folder}: is a directory, not a data file (give a file inside it)"


def test_a_symlink_loop_and_a_dangling_symlink_say_so(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=r"loop\.jsonl: symbolic link loop"):
        read_records(loop)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(DataError, match=r"dangling\.jsonl: symbolic link to a missing file"):
        read_records(dangling)


def test_a_file_without_read_permission_says_so(tmp_path, monkeypatch):
    path = tmp_path / "train.jsonl"
    path.write_bytes(PLAIN_BYTES)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(load, "open", refuse, raising=False)
    with pytest.raises(DataError) as error:
        read_records(path)
    assert str(error.value) == (
        f"{path}: no permission to read the file (ls -l shows who may; chmod u+r FILE allows you)"
    )


def test_a_file_without_read_permission_says_so_on_disk(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = tmp_path / "train.jsonl"
    path.write_bytes(PLAIN_BYTES)
    path.chmod(0)
    with pytest.raises(DataError, match="no permission to read the file"):
        read_records(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "the file is empty: it holds no rows"),
        ("blank.jsonl", b"\n  \n\n", "the file holds no rows, only blank lines"),
        ("empty.csv", b"", "the file is empty: it holds no rows"),
        ("blank.json", b"\n\n", "the file holds no rows, only blank lines"),
        ("empty.jsonl.gz", gzip.compress(b""), "the file is empty: it holds no rows"),
    ],
    ids=["empty", "blank", "empty-csv", "blank-json", "empty-gzip"],
)
def test_an_empty_file_counts_0_rows(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code, out, _ = run_cli(capsys, "data", "validate", path)
    assert code == 2
    assert f"{path}: {message}\n" in out
    assert f"{path}: 0 rows, 0 valid" in out
