"""Bad input is a user error that says where: malformed lines (file:line), skip mode, missing
images, empty datasets."""

import json
from pathlib import Path

import pytest

from assembler.data import DataError, read_sources
from assembler.data.records import ChatRecord, ImagePart, TextRecord, read_jsonl

TINY = Path(__file__).resolve().parents[1] / "specs" / "data" / "tiny"
GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_reads_both_layouts_and_resolves_images_relative_to_the_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes((TINY / "images" / "0000.png").read_bytes())
    chat = {"messages": [{"role": "user", "content": [{"type": "image", "path": "img/a.png"}, {"type": "text", "text": "x"}]},
                         {"role": "assistant", "content": "y"}]}
    result = read_sources([_write(tmp_path / "d.jsonl", [chat, "", {"text": "plain"}])])
    first, second = result.records
    assert isinstance(first, ChatRecord) and isinstance(second, TextRecord)
    assert first.messages[0].content == (ImagePart(path=(tmp_path / "img" / "a.png").resolve()), "x")
    assert first.source.endswith("d.jsonl:1") and second.source.endswith("d.jsonl:3")  # blank line 2 ignored


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"neither": 1}, "exactly one of 'messages'"),
        ({"text": ""}, "'text' must be a non-empty string"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role 'robot' is not one of"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}, "system message must be the first"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, r"messages\[0\].content\[0\]: expected"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "at least one user message"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path / "data.jsonl", [GOOD_CHAT, GOOD_CHAT, bad_line, GOOD_CHAT])
    with pytest.raises(DataError, match=message) as error:
        read_sources([path])
    assert f"{path}:3:" in str(error.value)
    assert "data.on_error: skip" in str(error.value)  # says what to do


def test_skip_mode_skips_and_counts(tmp_path):
    path = _write(tmp_path / "data.jsonl", [GOOD_CHAT, "not json", {"text": ""}, {"text": "ok"}])
    result = read_sources([path], on_error="skip")
    assert len(result.records) == 2
    assert len(result.skipped) == 2
    assert f"{path}:2:" in result.skipped[0] and f"{path}:3:" in result.skipped[1]


def test_missing_image_names_it(tmp_path):
    chat = {"messages": [{"role": "user", "content": [{"type": "image", "path": "pics/missing.png"}]},
                         {"role": "assistant", "content": "y"}]}
    path = _write(tmp_path / "data.jsonl", [GOOD_CHAT, chat])
    with pytest.raises(DataError, match=r"image 'pics/missing.png' not found") as error:
        read_sources([path])
    assert f"{path}:2:" in str(error.value)
    assert str(tmp_path / "pics" / "missing.png") in str(error.value)


def test_empty_dataset_is_an_error(tmp_path):
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="the dataset is empty"):
        read_sources([empty])
    all_bad = _write(tmp_path / "bad.jsonl", ["{", "}"])
    with pytest.raises(DataError, match="2 lines skipped as malformed"):
        read_sources([all_bad], on_error="skip")
    with pytest.raises(DataError, match="the dataset is empty"):
        read_sources([])


def test_missing_source_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_the_shipped_tiny_dataset_is_valid():
    result = read_sources([TINY / "captions.jsonl", TINY / "chats.jsonl"])
    chats = [r for r in result.records if isinstance(r, ChatRecord)]
    captions = [r for r in chats if r.images]
    assert 200 <= len(captions) <= 400 and not result.skipped
    assert len(chats) - len(captions) >= 12
    assert any(isinstance(r, TextRecord) for r in result.records)
    # Same prompt for every caption: the answer is predictable only from the image.
    assert {r.messages[0].content[1] for r in captions} == {"Describe the image."}
    assert sum(f.stat().st_size for f in TINY.rglob("*") if f.is_file()) < 2_000_000


def test_data_errors_are_user_errors():
    """The CLI prints user errors without a traceback and exits with 2."""
    from assembler.spec.errors import UserError

    assert issubclass(DataError, UserError)


def test_latin1_jsonl_is_a_data_error_naming_the_line(tmp_path):
    """Issue 12, defect 6: a Latin-1 file raised UnicodeDecodeError outside the per-line check."""
    from assembler.data.records import read_jsonl as read

    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' + '{"text": "caf\u00e9"}\n'.encode("latin-1") + b'{"text": "also fine"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\).*re-save the file as UTF-8"):
        read(path)
    skipped = read(path, on_error="skip")
    assert [r.text for r in skipped.records] == ["fine", "also fine"] and len(skipped.skipped) == 1


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_a_json_error_names_the_column_where_the_line_breaks(tmp_path, end):
    """A line cut short (column 95 ends it) was reported at "column 1": the decoder had met the newline."""
    cut = '{"messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi"'
    mid = '{"text": tru}'
    path = tmp_path / "data.jsonl"
    path.write_bytes(f"{json.dumps(GOOD_CHAT)}{end}{cut}{end}{mid}{end}".encode())
    result = read_sources([path], on_error="skip")
    assert result.skipped == [f"{path}:2: not valid JSON (Expecting ',' delimiter at column {len(cut) + 1})",
                              f"{path}:3: not valid JSON (Expecting value at column 10)"]
