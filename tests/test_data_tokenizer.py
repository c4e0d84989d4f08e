"""The tokenizer interface: the offline Qwen3.5 default's special ids equal the spec's, and an HF
tokenizer folder loads through the same interface."""

from pathlib import Path

import pytest
import yaml

from assembler.data import DataError, Tokenizer, load_tokenizer
from assembler.data.loader import check_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(None)


@pytest.mark.parametrize("spec_file", ["qwen3_5_tiny.yaml", "qwen3_5_4b.yaml"])
def test_special_ids_equal_the_specs_tokens(tokenizer, spec_file):
    model = yaml.safe_load((ROOT / "specs" / spec_file).read_text())["model"]
    tokens = model["tokens"]
    assert tokens == {"image": 248056, "video": 248057, "vision_start": 248053, "vision_end": 248054, "eos": 248044}
    assert tokenizer.token_id("<|image_pad|>") == tokens["image"]
    assert tokenizer.token_id("<|video_pad|>") == tokens["video"]
    assert tokenizer.token_id("<|vision_start|>") == tokens["vision_start"]
    assert tokenizer.token_id("<|vision_end|>") == tokens["vision_end"]
    assert tokenizer.token_id("<|endoftext|>") == tokens["eos"]
    check_tokenizer(tokenizer, tokens, model["text"]["vocab_size"])  # raises on any mismatch
    assert tokenizer.vocab_size <= model["text"]["vocab_size"]


def test_chat_special_ids(tokenizer):
    assert tokenizer.token_id("<|im_start|>") == 248045
    assert tokenizer.token_id("<|im_end|>") == 248046
    assert tokenizer.token_id("<think>") == 248068
    assert tokenizer.token_id("</think>") == 248069
    assert tokenizer.vocab_size == 248044 + 33  # 248,044 BPE ranks, then the special tokens


def test_encode_decode(tokenizer):
    ids = tokenizer.encode_markup("<|im_start|>user\nHello world<|im_end|>")
    assert ids == [248045, 846, 198, 9419, 1814, 248046]
    assert tokenizer.decode(ids) == "<|im_start|>user\nHello world<|im_end|>"
    assert tokenizer.decode(tokenizer.encode("A red circle. Ünïcödé ✓")) == "A red circle. Ünïcödé ✓"


def test_special_token_strings_in_text_are_plain_text(tokenizer):
    """Issue 12, defect 5: text naming a control token never becomes that token."""
    ids = tokenizer.encode("a literal <|image_pad|> token")
    special = set(tokenizer._special_tokens.values())
    assert not special & set(ids)
    assert tokenizer.decode(ids) == "a literal <|image_pad|> token"
    assert tokenizer.encode_markup("<|image_pad|>") == [tokenizer.token_id("<|image_pad|>")]


def test_unknown_special_token_is_a_clear_error(tokenizer):
    with pytest.raises(DataError, match="no special token '<\\|nope\\|>'"):
        tokenizer.token_id("<|nope|>")


def test_spec_token_mismatch_is_a_clear_error(tokenizer):
    with pytest.raises(DataError, match="model.tokens.image is 5"):
        check_tokenizer(tokenizer, {"image": 5}, None)
    with pytest.raises(DataError, match="model.text.vocab_size is 1000"):
        check_tokenizer(tokenizer, {}, 1000)


def test_hf_tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab = {"a": 0, "b": 1, "ab": 2, "Ġ": 3}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>"])
    hf.save(str(tmp_path / "tokenizer.json"))

    tok = load_tokenizer(tmp_path.name, base_dir=tmp_path.parent)  # relative to the spec's folder
    assert tok.token_id("<|im_start|>") == 5
    assert tok.encode_markup("ab<|im_start|>a") == [2, 5, 0]
    assert 5 not in tok.encode("ab<|im_start|>a")  # the user's text: the special string is plain text
    assert tok.decode([2, 5]) == "ab<|im_start|>"
    assert tok.vocab_size == 6


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")
