"""`assemble chat`: ask a trained model, as transformers serves it: its own model class, `generate`
and the export's chat template (`chat_template.jinja`).

An HF folder is loaded as it is; a run folder or training checkpoint is exported first, by the path
`assemble export` takes (a LoRA run merged), into a temporary folder. Images go through the
export's image processor in its PIL form and are laid into the prompt as transformers' Qwen-VL
processor lays them (one `<|image_pad|>` per merged patch, `mm_token_type_ids` marking them): the
processor class itself cannot be built without torchvision, which its video processor imports.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from assembler.spec.errors import UserError

IMAGE_PAD = "<|image_pad|>"  # the placeholder the chat template writes for an image, as transformers' processor expands it


class ChatError(UserError):
    """A model folder or image that cannot be chatted with (a user error, exit 2)."""


@dataclass
class ChatModel:
    """A loaded model with what turns a chat into its inputs."""

    model: torch.nn.Module
    tokenizer: object  # transformers' tokenizer of the folder, with its chat template
    image_processor: object | None  # None: a text-only model
    folder: Path

    def reply(self, messages: list[dict], images: list[Path], *, max_new_tokens: int, temperature: float = 0.0,
              thinking: bool = False, stream: Callable[[str], None] | None = None) -> str:
        """The assistant's answer to `messages` (transformers' chat format: `content` a string or a list of
        {"type": "text", "text"} / {"type": "image"} parts); `images` fill the image parts in order.
        Greedy at temperature 0. `stream` gets the text as it is generated."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
        extra: dict = {}
        if images:
            if self.image_processor is None:
                raise ChatError(f"{self.folder} is a text-only model (no vision tower): it cannot take --image")
            extra = dict(self.image_processor(images=[_open_image(path) for path in images], return_tensors="pt"))
            merged = self.image_processor.merge_size**2
            pieces = text.split(IMAGE_PAD)
            if len(pieces) - 1 != len(images):
                raise ChatError(f"the chat has {len(pieces) - 1} image part(s) and {len(images)} image(s) were given")
            counts = [int(grid.prod()) // merged for grid in extra["image_grid_thw"]]
            text = pieces[0] + "".join(IMAGE_PAD * count + piece for count, piece in zip(counts, pieces[1:]))
        inputs = dict(self.tokenizer(text, return_tensors="pt", add_special_tokens=False))
        if self.image_processor is not None:  # Qwen3.5's mRoPE reads which tokens are images (1) from it
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.model.config.image_token_id).long()
        device = next(self.model.parameters()).device
        inputs = {key: value.to(device) for key, value in {**inputs, **extra}.items()}
        streamer = _streamer(self.tokenizer, stream) if stream is not None else None
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **sampling)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@contextmanager
def chat_model(path: Path, note: Callable[[str], None]) -> Iterator[ChatModel]:
    """The model at `path` (an HF folder, a run folder or a training checkpoint), loaded for chatting."""
    from assembler.hf.export import export, resolve_export_source

    path = Path(path)
    if (path / "config.json").is_file():
        yield _load(path)
        return
    source = resolve_export_source(path, note)  # CheckpointError when there is nothing to chat with
    if source.dcp_dir is None:
        yield _load(source.hf_dir)
        return
    temporary = Path(tempfile.mkdtemp(prefix="assemble-chat-"))
    try:
        note(f"exporting {source.dcp_dir} to chat with it (assemble export writes the same folder)")
        export(path, temporary / "hf", shard_size="5GB")
        yield _load(temporary / "hf")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _load(folder: Path) -> ChatModel:
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    vision = getattr(config, "vision_config", None) is not None
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ChatError(f"{folder} has no tokenizer files: export it with `assemble export`, which writes them")
    loader = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = loader.from_pretrained(folder, dtype="auto").to(device).eval()
    image_processor = None
    if vision:
        from transformers import Qwen2VLImageProcessorPil  # Qwen-VL's image processor without torchvision

        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    return ChatModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), image_processor=image_processor, folder=folder)


def _open_image(path: Path):  # noqa: ANN202 (PIL.Image.Image)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ChatError(f"{path}: cannot be read as an image ({error})") from None


def _streamer(tokenizer, write: Callable[[str], None]):  # noqa: ANN001, ANN202 (transformers' types)
    """transformers' TextStreamer handing the new text, piece by piece, to `write`."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            write(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
