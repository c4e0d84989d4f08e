"""`assemble data SPEC`: the data pipeline's view of a spec's sources, every bad record listed with
its file and line, no model built."""

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
TINY_DATA = ROOT / "specs" / "data" / "tiny"


def _chat(user: list, answer: str = "A red circle.") -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


def _bad_source(folder: Path) -> Path:
    """Two good chats (one with an image), then one bad record of each kind, then a blank line."""
    shutil.copy(TINY_DATA / "images" / "0000.png", folder / "red.png")
    lines = [
        _chat([{"type": "image", "path": "red.png"}, {"type": "text", "text": "Describe the image."}]),  # 1: good
        _chat([{"type": "text", "text": "Hello?"}], "Hi."),                                                # 2: good
        '{"messages": [',                                                                                   # 3: not JSON
        _chat([{"type": "image", "path": "missing.png"}, {"type": "text", "text": "And this?"}]),         # 4: no image file
        json.dumps({"text": "word " * 600}),                                                               # 5: overlong
        json.dumps({"messages": [{"role": "user", "content": "No answer."}]}),                            # 6: nothing to train on
    ]
    path = folder / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    return path


def _run(*args: str):
    return CliRunner().invoke(assemble, ["data", str(TINY), *args])


def test_every_bad_record_is_listed_with_its_file_and_line(tmp_path):
    source = _bad_source(tmp_path)
    result = _run("-o", f"data.sources=[{{path: {source}}}]", "-o", "data.packing.overlong=drop")
    assert result.exit_code == 2, result.output  # `assemble train` would stop at line 3 (see below)
    out = result.output
    # Lines 3 (not JSON) and 4 (its image is missing) are refused when read; the blank line is no record.
    assert f"{source}: 4 records" in out
    assert "records: 4 read (3 chats, 1 plain text)" in out and "samples: 2," in out
    assert f"4 record(s) skipped or dropped (data.on_error: raise — training stops at the first):" in out
    assert f"{source}:3: not valid JSON" in out
    assert f"{source}:4: messages[0].content[0]: image 'missing.png' not found" in out
    assert f"{source}:5: dropped: " in out and "longer than data.packing.length 256" in out
    assert f"{source}:6: nothing to train on" in out
    assert "images per sample: 0 images: 1, 1 image: 1" in out


def test_data_exits_2_exactly_when_train_would_stop_on_the_data(tmp_path):
    """`assemble data SPEC && assemble train SPEC` guards the run: bad records under on_error: raise,
    or no sample at all, exit 2 (both exited 0 on 9cbf307); skipped bad records or dropped overlong
    ones do not."""
    source = _bad_source(tmp_path)
    sources = f"data.sources=[{{path: {source}}}]"
    raising = _run("-o", sources)
    assert raising.exit_code == 2
    assert "error: 3 bad records above, and data.on_error is raise: assemble train stops at the first" in raising.stderr
    assert "set data.on_error: skip" in raising.stderr
    assert _run("-o", sources, "--json").exit_code == 2
    skipping = _run("-o", sources, "-o", "data.on_error=skip")
    assert skipping.exit_code == 0, skipping.output
    overlong = tmp_path / "overlong.jsonl"
    overlong.write_text(json.dumps({"text": "word " * 600}) + "\n")
    dropped = _run("-o", f"data.sources=[{{path: {overlong}}}]", "-o", "data.packing.overlong=drop")
    assert dropped.exit_code == 2 and "error: no samples" in dropped.stderr
    assert f"{overlong}: 1 record\n" in dropped.stdout  # not "1 records"


def test_the_json_report_of_the_shipped_tiny_data(tmp_path):
    result = _run("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    captions = sum(1 for line in (TINY_DATA / "captions.jsonl").read_text().splitlines() if line.strip())
    chats = sum(1 for line in (TINY_DATA / "chats.jsonl").read_text().splitlines() if line.strip())
    assert report["samples"] == captions + chats and report["problems"] == []
    assert report["images_per_sample"] == {"0": chats, "1": captions}  # every caption record has one image
    assert sum(b["count"] for b in report["length_histogram"]) == report["samples"]
    assert all(b["low"] <= b["high"] <= 256 for b in report["length_histogram"])
    # Packed rows hold every token once: rows × row length ≥ tokens, efficiency = tokens / that.
    assert report["rows"] * report["row_tokens"] >= report["tokens"]
    assert abs(report["efficiency"] - report["tokens"] / (report["rows"] * report["row_tokens"])) < 1e-12


def test_a_missing_source_is_a_user_error(tmp_path):
    result = _run("-o", f"data.sources=[{{path: {tmp_path / 'nope.jsonl'}}}]")
    assert result.exit_code == 2 and "nope.jsonl does not exist" in result.output


def test_a_long_encoding_reports_progress_with_an_eta(tmp_path, monkeypatch):
    import assembler.data.encoding as encoding
    from assembler import load_spec
    from assembler.data.report import data_report

    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(600)))
    monkeypatch.setattr(encoding, "PROGRESS_EVERY_S", 0.0)  # a line at every check (each 256 records)
    lines: list[str] = []
    # Windows of one chunk (256 records) in file order: the pass advances 256, 256, then 88 records.
    spec = load_spec(TINY, [f"data.sources=[{{path: {source}}}]", "data.packing.window=256", "data.shuffle=false"])
    report = data_report(spec, progress=lines.append)
    assert report.samples == 600
    assert [line.split(" (")[0] for line in lines[:2]] == ["data: encoded 256 of 600 records", "data: encoded 512 of 600 records"]
    assert all(", ETA " in line for line in lines[:2]) and lines[-1].startswith("data: encoded 600 records in ")
