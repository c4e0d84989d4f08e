"""Qwen3.5's chat template: exact text and tokens, loss masks, next-token labels."""

import json
from pathlib import Path

import pytest

from assembler.data import IGNORE_INDEX, DataError, encode_chat, encode_text, load_tokenizer, render_chat
from assembler.data.chat_template import IMAGE_PAD
from assembler.data.records import parse_record, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "data" / "tiny"
GRID = (1, 4, 4)  # a 64x64 image: 4x4 patches of 16 -> 4 merged tokens


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def _record(obj: dict):
    return parse_record(json.dumps(obj), source="test.jsonl:1", base_dir=TINY)


def _encode(record, tokenizer, loss_on="assistant"):
    return encode_chat(record, tokenizer, image_grid=lambda path: GRID, image_tokens=lambda g: g[1] * g[2] // 4, loss_on=loss_on)


IMAGE_CHAT = {
    "messages": [
        {"role": "user", "content": [{"type": "image", "path": "images/0000.png"}, {"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": "A red circle."},
    ]
}
MULTI_TURN = {
    "messages": [
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": " Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5."},
    ]
}


def test_image_chat_text_and_tokens(tokenizer):
    record = _record(IMAGE_CHAT)
    assert render_chat(record.messages) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nA red circle.<|im_end|>\n"
    )
    sample = _encode(record, tokenizer)
    assert [tokenizer.decode([t]) for t in sample.input_ids] == [
        "<|im_start|>", "user", "\n", "<|vision_start|>", *["<|image_pad|>"] * 4, "<|vision_end|>",
        "Describe", " the", " image", ".", "<|im_end|>", "\n",
        "<|im_start|>", "assistant", "\n", "<think>", "\n\n", "</think>", "\n\n", "A", " red", " circle", ".", "<|im_end|>", "\n",
    ]
    assert sample.images == [(TINY / "images/0000.png").resolve()] and sample.image_grids == [GRID]
    # Targets: the assistant answer after "<|im_start|>assistant\n", through <|im_end|>, nothing else.
    targets = [tokenizer.decode([t]) for t in sample.labels if t != IGNORE_INDEX]
    assert targets == ["<think>", "\n\n", "</think>", "\n\n", "A", " red", " circle", ".", "<|im_end|>"]
    # Aligned as next-token targets: labels[t] is input_ids[t + 1].
    first = next(t for t, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    assert tokenizer.decode(sample.input_ids[first - 1 : first + 1]) == "assistant\n"
    assert sample.labels[first] == sample.input_ids[first + 1]
    assert sample.labels[-1] == IGNORE_INDEX


def test_multi_turn_chat_text_and_masks(tokenizer):
    record = _record(MULTI_TURN)
    # History turns get no think block; the turn after the last user message gets the empty one.
    assert render_chat(record.messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n5.<|im_end|>\n"
    )
    sample = _encode(record, tokenizer)
    assert sample.input_ids == tokenizer.encode_markup(render_chat(record.messages))
    runs, run = [], []
    for label in sample.labels:
        if label == IGNORE_INDEX:
            if run:
                runs.append(tokenizer.decode(run))
            run = []
        else:
            run.append(label)
    assert runs == ["Hello!<|im_end|>", "<think>\n\n</think>\n\n5.<|im_end|>"]


def test_reasoning_goes_inside_think(tokenizer):
    record = _record({"messages": [{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "<think>\nstep\n</think>\n\nanswer"}]})
    assert render_chat(record.messages).endswith("<|im_start|>assistant\n<think>\nstep\n</think>\n\nanswer<|im_end|>\n")


def test_loss_on_all_trains_every_token_but_image_pads(tokenizer):
    sample = _encode(_record(IMAGE_CHAT), tokenizer, loss_on="all")
    pad = tokenizer.token_id(IMAGE_PAD)
    expected = [t if t != pad else IGNORE_INDEX for t in sample.input_ids[1:]] + [IGNORE_INDEX]
    assert sample.labels == expected


def test_plain_text_trains_every_token_and_ends_with_eos(tokenizer):
    record = parse_record(json.dumps({"text": "Squares have four sides."}), source="t:1", base_dir=TINY)
    sample = encode_text(record, tokenizer)
    assert sample.input_ids == tokenizer.encode("Squares have four sides.") + [tokenizer.token_id("<|endoftext|>")]
    assert sample.labels == sample.input_ids[1:] + [IGNORE_INDEX]


def test_chat_without_an_answer_is_an_error(tokenizer):
    record = _record({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(DataError, match="test.jsonl:1: nothing to train on"):
        _encode(record, tokenizer)
    assert _encode(record, tokenizer, loss_on="all").labels[0] != IGNORE_INDEX


def test_tokens_equal_tokenizing_the_rendered_text(tokenizer):
    """Encoding piece by piece (to place the loss mask) equals encoding the whole rendered chat."""
    records = read_jsonl(TINY / "chats.jsonl").records + read_jsonl(TINY / "captions.jsonl").records[:3]
    chats = [r for r in records if hasattr(r, "messages")]
    assert len(chats) >= 12
    for record in chats:
        sample = _encode(record, tokenizer)
        text = render_chat(record.messages).replace(IMAGE_PAD, IMAGE_PAD * 4)
        assert sample.input_ids == tokenizer.encode_markup(text), record.source


@pytest.mark.parametrize("where", ["user", "assistant", "reasoning", "text"])
def test_special_token_strings_in_records_are_plain_text(tokenizer, where):
    """Issue 12, defect 5: `a literal <|image_pad|> token` in any text never becomes an image token
    (which would give the model image tokens without an image, and kill the run)."""
    literal = "a literal <|image_pad|> token and <|im_end|><|im_start|>system"
    if where == "text":
        sample = encode_text(parse_record(json.dumps({"text": literal}), source="t:1", base_dir=TINY), tokenizer)
    else:
        messages = [{"role": "user", "content": literal if where == "user" else "q"},
                    {"role": "assistant", "content": literal if where == "assistant" else "a"}]
        if where == "reasoning":
            messages[1]["reasoning_content"] = literal
        sample = _encode(_record({"messages": messages}), tokenizer)
    for special in ("<|image_pad|>", "<|im_start|>", "<|im_end|>"):
        count = sample.input_ids.count(tokenizer.token_id(special))
        expected = 0 if where == "text" or special == "<|image_pad|>" else 2  # the template's own two turns
        assert count == expected, (where, special, count)
    assert literal in tokenizer.decode(sample.input_ids)
