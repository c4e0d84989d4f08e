"""Fuzzed input never gives a traceback (issue 26): mutated specs and overrides, records and the
files they name, checkpoint and `train.init_from` folders each end `assemble validate`, `build`,
`data` or `train` with exit code 0 or 2, and leave every file the run did not create as it was.

Driven in this process through click's runner (tests/fuzz_inputs.py). Seeded (`derandomize`) and
small: about a hundred examples in all, most of them `validate`/`build` in milliseconds; `data` and
`train` run on a handful of records with the tiny specs, `train` for one step and without export.
The strategies and the budget are tuned so the module stays well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz_inputs import (
    DEEP, REPO, SHIPPED_SPECS, dump_json, dump_yaml, file_states, mutated, overrides_for, run_cli, text_damage,
)


def fuzz_settings(examples: int) -> settings:
    """Seeded and `examples` long in CI; `FUZZ_EXAMPLES=500 pytest tests/test_fuzz_inputs.py` searches
    longer, with fresh random examples each run, for a session hunting new failures."""
    longer = int(os.environ.get("FUZZ_EXAMPLES", "0"))
    return settings(max_examples=longer or examples, derandomize=not longer, deadline=None, database=None,
                    print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                            HealthCheck.function_scoped_fixture])


SPEC_DOCS = {path.name: yaml.safe_load(path.read_text()) for path in SHIPPED_SPECS}


@st.composite
def spec_cases(draw: st.DrawFn) -> tuple[str, bytes, list[str]]:
    """(shipped spec's file name, the text to put in its place, overrides)."""
    name = draw(st.sampled_from(sorted(SPEC_DOCS)))
    original = (REPO / "specs" / name).read_bytes()
    kind = draw(st.sampled_from(["mutate", "mutate", "damage", "override"]))
    if kind == "mutate":
        return name, dump_yaml(draw(mutated(SPEC_DOCS[name]))).encode(), []
    if kind == "damage":
        return name, draw(text_damage(original)), []
    return name, original, draw(overrides_for(SPEC_DOCS[name]))


@fuzz_settings(examples=80)
@given(case=spec_cases())
def test_fuzzed_specs_validate_and_build_without_a_traceback(case):
    name, text, overrides = case
    with tempfile.TemporaryDirectory() as folder:
        specs = Path(folder)
        for path in SHIPPED_SPECS:  # beside each other: a spec may extend another
            shutil.copy(path, specs / path.name)
        (specs / name).write_bytes(text)
        before = file_states(specs)
        args = [str(specs / name), *(arg for override in overrides for arg in ("-o", override))]
        if run_cli(["validate", *args]).exit_code == 0:
            run_cli(["build", "--no-summary", *args])
        assert file_states(specs) == before


# --- records and the files they name ----------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (and whose pixel data is missing): Pillow refuses it
    as a decompression bomb from the header alone, as it would the real 200-megapixel image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _write_video(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for value in (0, 255):
            frame = np.full((32, 32, 3), value, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Files records name: good and broken images and videos, and things that are neither."""
    folder = tmp_path_factory.mktemp("media", numbered=False)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "good.png")
    good = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    (folder / "text.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "folder.png").mkdir()
    _write_video(folder / "good.mp4")
    video = (folder / "good.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(video[: len(video) // 3])
    (folder / "image.mp4").write_bytes(good)
    return folder


MEDIA_NAMES = ["good.png", "truncated.png", "bomb.png", "text.png", "empty.png", "folder.png", "missing.png",
               "good.mp4", "truncated.mp4", "image.mp4", "x" * 5000, "a\x00b.png", "../media/good.png"]


@st.composite
def records(draw: st.DrawFn) -> dict:
    """A chat or text record, well-formed or mutated, naming one of the media files (or a bad path)."""
    part = draw(st.sampled_from(["image", "video"]))
    record = draw(st.sampled_from([
        {"text": "Plain text."},
        {"messages": [{"role": "user", "content": [{"type": part, "path": draw(st.sampled_from(MEDIA_NAMES))},
                                                    {"type": "text", "text": "Describe it."}]},
                      {"role": "assistant", "content": "A red square.", "reasoning_content": "Look."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}]},
    ]))
    return draw(st.one_of(st.just(record), mutated(record, max_mutations=2, depths=(2, 40, 3000))))


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, bytes | list]:
    """('jsonl', the file's bytes) or ('parquet', its rows)."""
    rows = draw(st.lists(records(), min_size=1, max_size=4))
    if draw(st.integers(0, 3)) == 0:
        return "parquet", rows
    text = "".join(dump_json(row) + "\n" for row in rows).encode()
    return "jsonl", draw(st.one_of(st.just(text), text_damage(text)))


def _write_table(path: Path, rows: list) -> bool:
    import pyarrow
    import pyarrow.parquet

    try:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    except (pyarrow.ArrowException, TypeError, ValueError, OverflowError):
        return False  # rows Arrow cannot hold in one table: no such file can exist
    return True


TINY_DATA_SETTINGS = {key: SPEC_DOCS["qwen3_5_tiny.yaml"][key] for key in ("data", "train")}


@fuzz_settings(examples=8)
@given(file=data_files(), on_error=st.sampled_from(["raise", "skip"]), length=st.sampled_from([16, 64, 256]),
       settings_overrides=st.one_of(st.just([]), overrides_for(TINY_DATA_SETTINGS)))
def test_fuzzed_records_and_media_read_without_a_traceback(media, file, on_error, length, settings_overrides):
    """`assemble data` on fuzzed records, now and then with a fuzzed data or train setting too."""
    kind, content = file
    with tempfile.TemporaryDirectory(dir=media.parent) as folder:
        data = Path(folder)
        source = _write_data_folder(data, media, kind, content)
        if source is None:
            return
        spec = data / "spec.yaml"
        shutil.copy(REPO / "specs" / "qwen3_5_tiny.yaml", spec)
        before = {**file_states(data), **file_states(media)}
        run_cli(["data", str(spec), "-o", f"data.sources=[{{path: {source.name}}}]", "-o", f"data.on_error={on_error}",
                 "-o", f"data.packing.length={length}", "-o", f"train.tokens_per_step={length}",
                 *(arg for override in settings_overrides for arg in ("-o", override))])
        after = {**file_states(data), **file_states(media)}
        assert after == before


# --- checkpoint and train.init_from folders ----------------------------------------------------------

TRAIN_ONE_STEP = ["-o", "train.steps=1", "-o", "train.export_hf=false", "-o", "train.tokens_per_step=32",
                  "-o", "data.packing.length=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A text-only tiny spec (qwen3_tiny) with three records, a run folder of one step (its
    checkpoint to resume from) and an HF folder of the same model (to start from)."""
    from assembler import build_model, load_spec
    from assembler.hf.checkpoint.writing import save_hf_checkpoint

    folder = tmp_path_factory.mktemp("trained")
    spec = folder / "spec.yaml"
    written = yaml.safe_load((REPO / "specs" / "qwen3_tiny.yaml").read_text())
    written["data"]["sources"] = [{"path": "chats.jsonl"}]  # in the file: relative to it (an -o path is the cwd's)
    spec.write_text(yaml.safe_dump(written))
    lines = (REPO / "specs" / "data" / "tiny" / "chats.jsonl").read_text().splitlines(keepends=True)[:3]
    (folder / "chats.jsonl").write_text("".join(lines))
    trained = run_cli(["train", str(spec), *TRAIN_ONE_STEP, "--output-dir", str(folder / "run")])
    assert trained.exit_code == 0, trained.output
    loaded = load_spec(spec, [arg for arg in TRAIN_ONE_STEP if arg != "-o"])
    save_hf_checkpoint(build_model(loaded, device="cpu"), folder / "hf", loaded)
    checkpoint_files = sorted(p.name for p in (folder / "run" / "checkpoints" / "step_000001").iterdir())
    hf_files = sorted(p.name for p in (folder / "hf").iterdir())
    assert {"COMPLETE", "resolved_spec.yaml"} <= set(checkpoint_files) and "config.json" in hf_files
    return {"spec": spec, "run": folder / "run", "hf": folder / "hf", "files": {"resume": checkpoint_files, "init_from": hf_files}}


@st.composite
def folder_damage(draw: st.DrawFn, files: list[str]) -> tuple[str, str, object]:
    """(file, what to do to it, with what): deleted, cut short, bytes replaced, its JSON or YAML mutated."""
    name = draw(st.sampled_from(files))
    action = draw(st.sampled_from(["delete", "truncate", "garble", "mutate", "folder"]))
    if action == "mutate" and not name.endswith((".json", ".yaml")):
        action = "garble"
    how: object = None
    if action == "truncate":
        how = draw(st.integers(0, 4096))
    elif action == "garble":
        how = (draw(st.integers(0, 4096)), draw(st.binary(min_size=1, max_size=8)))
    elif action == "mutate":
        how = draw(st.floats(0, 0.999))
    return name, action, how


def _damage(file: Path, action: str, how: object) -> None:
    if action == "delete":
        file.unlink()
    elif action == "folder":
        file.unlink()
        file.mkdir()
    elif action == "truncate":
        with open(file, "r+b") as handle:
            handle.truncate(min(int(how), file.stat().st_size))
    elif action == "garble":
        at, junk = how
        data = bytearray(file.read_bytes())
        at = min(at, len(data))
        data[at:at + len(junk)] = junk
        file.write_bytes(bytes(data))
    else:  # mutate: a parsed document with one value replaced by an edge case
        text = file.read_text()
        document = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
        _replace_some_value(document, how)
        file.write_text(dump_json(document) if file.suffix == ".json" else dump_yaml(document))


EDGE_VALUES = [None, -1, 10**30, float("nan"), "x\x00y", [], {}, f"{DEEP}3000", {"5": 5}, "qwen3_5"]


def _replace_some_value(document: object, fraction: float) -> None:
    """Replace the value at a position `fraction` of the way through `document`'s keys."""
    from tests.fuzz_inputs import paths_of

    paths = [p for p in paths_of(document)]
    if not paths:
        return
    path = paths[int(fraction * len(paths))]
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = EDGE_VALUES[int(fraction * 1000) % len(EDGE_VALUES)]


def _linked_copy(source: Path, target: Path) -> None:
    """`source` copied to `target` with hard links (a 250 MB checkpoint copies in no time); a damaged
    file is first replaced by a private copy, so the original never changes."""
    shutil.copytree(source, target, copy_function=os.link)


@fuzz_settings(examples=5)
@given(which=st.sampled_from(["resume", "init_from", "records"]), data=st.data())
def test_fuzzed_checkpoint_init_from_and_records_train_without_a_traceback(trained, media, which, data):
    if which == "records":
        return _train_on_fuzzed_records(trained, media, *data.draw(data_files()), data.draw(st.sampled_from(["raise", "skip"])))
    name, action, how = data.draw(folder_damage(trained["files"][which]))
    with tempfile.TemporaryDirectory(dir=trained["spec"].parent) as folder:
        work = Path(folder)
        if which == "resume":
            _linked_copy(trained["run"], work / "run")
            damaged = work / "run" / "checkpoints" / "step_000001" / name
            watched = work / "run" / "checkpoints" / "step_000001"
            args = [*TRAIN_ONE_STEP, "-o", "train.steps=2", "--output-dir", str(work / "run")]
        else:
            _linked_copy(trained["hf"], work / "hf")
            damaged, watched = work / "hf" / name, work / "hf"
            args = [*TRAIN_ONE_STEP, "-o", f"train.init_from={work / 'hf'}", "--output-dir", str(work / "run")]
        if not damaged.is_file():
            return
        private = damaged.read_bytes()  # break the hard link before changing the file
        damaged.unlink()
        damaged.write_bytes(private)
        _damage(damaged, action, how)
        inputs, folder_before = file_states(trained["spec"].parent, top_level_only=True), file_states(watched)
        result = run_cli(["train", str(trained["spec"]), *args])
        assert file_states(trained["spec"].parent, top_level_only=True) == inputs
        if which == "init_from" or result.exit_code != 0:
            # A resume that went ahead owns its run folder (it may prune a checkpoint it could not
            # use, as one without COMPLETE); one refused leaves it as it was, and so does any run
            # its init_from folder.
            assert file_states(watched) == folder_before


def _train_on_fuzzed_records(trained: dict[str, Path], media: Path, kind: str, content: bytes | list, on_error: str) -> None:
    with tempfile.TemporaryDirectory(dir=media.parent) as folder:
        data = Path(folder)
        source = _write_data_folder(data, media, kind, content)
        if source is None:
            return
        before = {**file_states(data), **file_states(media), **file_states(trained["spec"].parent, top_level_only=True)}
        run_cli(["train", str(trained["spec"]), *TRAIN_ONE_STEP, "-o", f"data.sources=[{{path: {source}}}]",
                 "-o", f"data.on_error={on_error}", "--output-dir", str(data / "run")])
        after = {**file_states(data), **file_states(media), **file_states(trained["spec"].parent, top_level_only=True)}
        assert {k: v for k, v in after.items() if "/run/" not in k} == before


def test_the_damage_helpers_change_what_they_say(tmp_path):
    """The fuzz's own tools: a damaged file differs from the original, a JSON mutation parses."""
    original = tmp_path / "a.json"
    original.write_text(json.dumps({"a": {"b": 1, "c": [1, 2]}}))
    for action, how in (("truncate", 3), ("garble", (2, b"\xff")), ("mutate", 0.5)):
        copy = tmp_path / f"{action}.json"
        copy.write_bytes(original.read_bytes())
        _damage(copy, action, how)
        assert copy.read_bytes() != original.read_bytes()
    assert json.loads((tmp_path / "mutate.json").read_text()) != json.loads(original.read_text())


def _write_data_folder(data: Path, media: Path, kind: str, content: bytes | list) -> Path | None:
    """The fuzzed records as `data/data.KIND`, the media linked beside them (relative paths in the
    records resolve beside the data file); None when a table cannot be written from `content`."""
    source = data / f"data.{kind}"
    if kind == "jsonl":
        source.write_bytes(content)
    elif not _write_table(source, content):
        return None
    for name in os.listdir(media):
        os.symlink(media / name, data / name)
    return source
