"""Data files cut into chunks: the unit the streaming loader shuffles, weighs and reads.

A chunk is RECORDS_PER_CHUNK consecutive records of one file (fewer at the end of a file, or of a
table's batch): JSONL lines from a byte offset, or rows of one Parquet row group / Arrow record
batch. Indexing a file reads it once without parsing it (JSONL: the line starts; tables: their
metadata or batch lengths) and keeps three integers per chunk, so a million-record set costs a
few seconds and a few hundred kilobytes; reading a chunk then seeks straight to it, and its records
keep their `file:line` (`file:row N`) for error messages.

A table chunk decodes its whole batch: a file written with huge row groups reads slowly; write
tables with row groups of a few thousand rows (`datasets` does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from assembler.data.records import ReadResult, read_jsonl_line
from assembler.data.sources import TABLE_SUFFIXES, read_table_row, source_files, table_batches

RECORDS_PER_CHUNK = 256  # small next to a packing window (data.packing.window), large next to a seek


@dataclass(frozen=True)
class Chunk:
    """Records [first, first + count) of `file`: JSONL lines (1-based, blank lines included) from
    byte `offset`, or table rows (1-based) of batch `batch`, whose first row is `batch_start`.

    source: the index of the `data.sources` entry the file belongs to.
    """

    source: int
    file: Path
    first: int
    count: int
    offset: int = 0
    batch: int | None = None
    batch_start: int = 1

    def read(self, *, on_error: str, into: ReadResult | None = None) -> ReadResult:
        """The chunk's records (bad ones raised or, on_error "skip", listed in `skipped`)."""
        result = into if into is not None else ReadResult()
        if self.batch is None:
            with self.file.open("rb") as lines:
                lines.seek(self.offset)
                for number in range(self.first, self.first + self.count):
                    read_jsonl_line(lines.readline(), path=self.file, number=number, on_error=on_error, into=result)
            return result
        batch = next(table_batches(self.file, only=self.batch))
        start = self.first - self.batch_start
        for number, row in enumerate(batch.slice(start, self.count).to_pylist(), start=self.first):
            read_table_row(row, path=self.file, number=number, on_error=on_error, into=result)
        return result


def index_source(path: Path, source: int) -> list[Chunk]:
    """The chunks of one `data.sources` entry (a file, or a folder's data files in name order)."""
    return [chunk for file in source_files(Path(path)) for chunk in index_file(file, source)]


def index_file(file: Path, source: int) -> list[Chunk]:
    """The chunks of one data file, in file order."""
    if file.suffix in TABLE_SUFFIXES:
        chunks, row = [], 1
        for batch_index, batch in enumerate(table_batches(file)):
            for start in range(0, batch.num_rows, RECORDS_PER_CHUNK):
                count = min(RECORDS_PER_CHUNK, batch.num_rows - start)
                chunks.append(Chunk(source, file, first=row + start, count=count, batch=batch_index, batch_start=row))
            row += batch.num_rows
        return chunks
    chunks, offset = [], 0
    with file.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if (number - 1) % RECORDS_PER_CHUNK == 0:
                chunks.append([number, 0, offset])
            chunks[-1][1] += 1
            offset += len(line)
    return [Chunk(source, file, first=first, count=count, offset=start) for first, count, start in chunks]


def file_fingerprint(file: Path) -> str:
    """Size and the hash of the first and last MiB: a changed data file is told apart without
    reading all of it (a resume onto changed data is refused)."""
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with file.open("rb") as data:
        digest.update(data.read(1 << 20))
        if size > 1 << 20:
            data.seek(max(size - (1 << 20), 1 << 20))
            digest.update(data.read())
    return digest.hexdigest()[:16]
