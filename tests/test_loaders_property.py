"""Whatever bytes or JSON a data file holds, loading it either works or raises the project's
DataError naming the file (and line where there is one): never another exception."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migaki.data.formats import convert_records
from migaki.data.load import scan_records
from migaki.data.validate import validate_file
from migaki.errors import DataError

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Rows shaped like the supported formats, with arbitrary values inside, reach deeper code.
KEYS = st.sampled_from(
    [
        *("messages", "conversations", "instruction", "output", "input", "prompt", "completion"),
        *("text", "label", "role", "content", "from", "value", "system", "sentence"),
    ]
)
ROW = st.dictionaries(KEYS, JSON, max_size=5) | st.dictionaries(
    st.just("messages"),
    st.lists(st.dictionaries(st.sampled_from(["role", "content"]), JSON), max_size=4),
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_everything(path: Path) -> None:
    """Every loader entry point a command uses on a file."""
    try:
        scan = scan_records(path)
        convert_records(scan.records)
        validate_file(path)
    except DataError as error:
        assert str(error).startswith(str(path))


@SETTINGS
@given(content=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes_only_raise_data_errors(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        load_everything(path)


@SETTINGS
@given(rows=st.lists(ROW | JSON, max_size=6))
def test_arbitrary_json_lines_only_raise_data_errors(rows):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
        load_everything(path)
        array = Path(folder) / "data.json"
        array.write_text(json.dumps(rows), encoding="utf-8")
        load_everything(array)


@SETTINGS
@given(
    header=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3),
    cells=st.lists(st.lists(st.text(max_size=10), max_size=4), max_size=5),
)
def test_arbitrary_csv_cells_only_raise_data_errors(header, cells):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.tsv"
        lines = ["\t".join(header), *("\t".join(row) for row in cells)]
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        load_everything(path)
