"""Parquet and Arrow sources, and folders of data files: a table's rows are records with the JSONL
layout, so the same records give the same samples whichever file holds them."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assembler import load_spec
from assembler.data import DataError, build_loader
from assembler.data.sources import read_source
from cli import assemble
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
TINY_DATA = ROOT / "specs" / "data" / "tiny"


def _as_parts(content):
    """Arrow has no str-or-list column: every content becomes a list of parts (same tokens)."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _records(name: str) -> list[dict]:
    records = [json.loads(line) for line in (TINY_DATA / name).read_text().splitlines() if line.strip()]
    return [{"messages": [{**m, "content": _as_parts(m["content"])} for m in r["messages"]]} if "messages" in r else r
            for r in records if "messages" in r]  # chats only: a table holds one record layout


def _copy_images(folder: Path) -> None:
    shutil.copytree(TINY_DATA / "images", folder / "images")


def _samples(spec_source: Path) -> list:
    loader = build_loader(load_spec(TINY, [f"data.sources=[{{path: {spec_source}}}]"]))
    in_file_order = sorted(loader.samples_of_epoch(0), key=lambda s: int(s.source.rsplit(":", 1)[1].split()[-1]))
    return [(s.input_ids, s.labels, [p.name for p in s.images], s.image_grids) for s in in_file_order]


@pytest.mark.parametrize("kind", ["parquet", "arrow stream", "arrow file"])
def test_a_table_gives_the_samples_its_jsonl_gives(tmp_path, kind):
    _copy_images(tmp_path)
    records = _records("captions.jsonl")[:40] + _records("chats.jsonl")
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = pa.Table.from_pylist(records)
    if kind == "parquet":
        path = tmp_path / "records.parquet"
        pq.write_table(table, path, row_group_size=16)  # several row groups: batches cross them
    else:
        path = tmp_path / "records.arrow"
        writer_of = pa.ipc.new_stream if kind == "arrow stream" else pa.ipc.new_file  # datasets' save_to_disk: stream
        with pa.OSFile(str(path), "wb") as sink, writer_of(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=16)
    assert _samples(path) == _samples(jsonl) and len(_samples(path)) == len(records)


def test_a_folder_source_reads_its_data_files_in_name_order(tmp_path):
    _copy_images(tmp_path)
    captions, chats = _records("captions.jsonl")[:10], _records("chats.jsonl")
    pq.write_table(pa.Table.from_pylist(captions), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
    (tmp_path / "notes.txt").write_text("not data")
    read = read_source(tmp_path)
    assert [r.source for r in read.records] == [f"{tmp_path / 'a.parquet'}:row {i}" for i in range(1, 11)] + [
        f"{tmp_path / 'b.jsonl'}:{i}" for i in range(1, len(chats) + 1)]
    with pytest.raises(DataError, match=r"is a folder with no \.jsonl, \.parquet, \.arrow file"):
        read_source(tmp_path / "images")


def test_a_bad_row_is_named_by_file_and_row(tmp_path):
    _copy_images(tmp_path)
    records = _records("chats.jsonl")[:3]
    records[1] = {"messages": [{"role": "narrator", "content": [{"type": "text", "text": "once"}]}]}
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    with pytest.raises(DataError, match=rf"{path}:row 2: messages\[0\]: role 'narrator' is not one of"):
        next(build_loader(load_spec(TINY, [f"data.sources=[{{path: {path}}}]"])))
    report = CliRunner().invoke(assemble, ["data", str(TINY), "-o", f"data.sources=[{{path: {path}}}]"])
    # exit 2: `assemble train` would stop on this record (data.on_error: raise), and the report says where
    assert report.exit_code == 2 and f"{path}:row 2: messages[0]: role 'narrator'" in report.output
    assert f"{path}: 2 records" in report.output
