"""Data sources: JSONL files, Parquet and Arrow files, and folders of them, read into records.

A table's rows are records with the JSONL layout (records.py): a `messages` column (a list of
{role, content} structs; content a string or a list of {type, text, path} parts) or a `text`
column; other columns are ignored, as other JSONL keys are. Arrow leaves absent struct fields
null, so nulls are dropped before a row is parsed. Image and video paths are relative to the table's file.
A bad row is reported as `file:row N` (1-based), as a bad JSONL line is `file:N`.

Tables are read with pyarrow (what Hugging Face `datasets` stores its files with: `.arrow`
streams from `save_to_disk`, Parquet from the Hub), batch by batch. A folder source is every
`.jsonl`, `.parquet` and `.arrow` file directly inside it, in name order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from assembler.data.records import ON_ERROR, DataError, ReadResult, parse_object, read_jsonl

TABLE_SUFFIXES = (".parquet", ".arrow")
FOLDER_SUFFIXES = (".jsonl", *TABLE_SUFFIXES)


def source_files(path: Path) -> list[Path]:
    """The files a source names: itself, or a folder's data files in name order."""
    if not path.exists():
        raise DataError(f"data source {path} does not exist; check data.sources (paths are relative to the spec file)")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FOLDER_SUFFIXES)
    if not files:
        raise DataError(f"data source {path} is a folder with no {', '.join(FOLDER_SUFFIXES)} file in it")
    return files


def read_sources(paths: list[Path], *, on_error: str = "raise") -> ReadResult:
    """Read every JSONL file in order. An empty result (after skipping) is an error."""
    if on_error not in ON_ERROR:
        raise DataError(f"data.on_error: {on_error!r} is not one of {', '.join(ON_ERROR)}")
    result = ReadResult()
    for path in paths:
        read_source(Path(path), on_error=on_error, into=result)
    if not result.records:
        why = f" ({len(result.skipped)} lines skipped as malformed)" if result.skipped else ""
        names = ", ".join(str(p) for p in paths) or "(no sources listed)"
        raise DataError(f"the dataset is empty: no usable records in {names}{why}; check data.sources")
    return result


def read_source(path: Path, *, on_error: str = "raise", into: ReadResult | None = None) -> ReadResult:
    """Read one source (a file or a folder) into `into`; every other suffix than a table's is JSONL."""
    result = into if into is not None else ReadResult()
    for file in source_files(Path(path)):
        if file.suffix in TABLE_SUFFIXES:
            read_table(file, on_error=on_error, into=result)
        else:
            read_jsonl(file, on_error=on_error, into=result)
    return result


def read_table(path: Path, *, on_error: str = "raise", into: ReadResult | None = None) -> ReadResult:
    """Read one Parquet or Arrow file's rows as records (see the module docstring)."""
    result = into if into is not None else ReadResult()
    number = 0
    for batch in table_batches(path):
        for number, row in enumerate(batch.to_pylist(), start=number + 1):
            read_table_row(row, path=path, number=number, on_error=on_error, into=result)
    return result


def read_table_row(row: dict, *, path: Path, number: int, on_error: str, into: ReadResult) -> None:
    """Row `number` (1-based) of table `path` as a record appended to `into` (as `read_jsonl_line`)."""
    source = f"{path}:row {number}"
    try:
        into.records.append(parse_object(_without_nulls(row), source=source, base_dir=path.parent))
    except DataError as error:
        if on_error == "raise":
            raise DataError(f"{error} (set data.on_error: skip to skip bad records)") from None
        into.skipped.append(str(error))


def table_batches(path: Path, only: int | None = None) -> Iterator[Any]:
    """The record batches of a Parquet file (its row groups) or an Arrow file (its record batches),
    in order; `only`: just batch `only` (the others are not decoded)."""
    try:
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"data source {path} is a {path.suffix[1:]} table, which needs pyarrow: `pip install pyarrow`") from None
    try:
        if path.suffix == ".parquet":
            parquet = pyarrow.parquet.ParquetFile(path)
            groups = range(parquet.num_row_groups) if only is None else [only]
            for group in groups:
                yield parquet.read_row_group(group)
            return
        try:  # `datasets`' save_to_disk writes the stream format; the file format is tried second
            stream = pyarrow.ipc.open_stream(pyarrow.memory_map(str(path)))
        except pyarrow.ArrowInvalid:
            reader = pyarrow.ipc.open_file(pyarrow.memory_map(str(path)))
            for index in range(reader.num_record_batches) if only is None else [only]:
                yield reader.get_batch(index)
            return
        for index, batch in enumerate(stream):  # a stream has no index: memory-mapped, skipping is cheap
            if only is None or index == only:
                yield batch
    except pyarrow.ArrowException as error:
        raise DataError(f"data source {path} cannot be read as a {path.suffix[1:]} table ({error})") from None


def _without_nulls(value: Any) -> Any:
    """A row with its null struct fields left out (Arrow has no absent field)."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value
