"""The spec `assemble import-hf FOLDER` writes: the folder's model, fine-tuned from its weights.

- `name`: the model's own name (`--name`, else config.json's `_name_or_path`, the run's name for
  a run's `hf/` export, the repository's for a Hugging Face cache snapshot, else the folder's),
  lower case with `_`, and `_lora` after it for a LoRA spec: the run folder is `runs/<name>`;
- `train.init_from`: the folder, when it holds safetensors weights (a lone config.json gives a
  spec that trains from random init, and says so);
- `data.tokenizer`: the folder, when it holds a `tokenizer.json`;
- `data.sources`: the files given (`--data`), or none yet (the spec then says where to add them);
- `parallel`, `train`: the family's fine-tuning settings (`ModelFamily.fine_tuning_settings`),
  `steps` / `tokens_per_step` when given.

Paths are written relative to the spec file, as every path inside a spec is read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from assembler.model.family import family_named
from assembler.hf.config import spec_from_hf_config
from assembler.spec.loading import deep_merge
from assembler.train.run_dir import RESOLVED_SPEC_FILE

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_SNAPSHOT = re.compile(r"^[0-9a-f]{40}$")  # huggingface_hub cache: models--ORG--NAME/snapshots/<commit>


@dataclass(frozen=True)
class ImportedSpec:
    spec: dict  # name, model, parallel, train, data: what the file holds
    notes: list[str]  # what the user should know (no weights, no data yet)


def fine_tuning_spec(config_or_dir: str | os.PathLike, spec_file: Path, *, name: str | None = None,
                     data: tuple[Path, ...] = (), lora: bool = False, steps: int | None = None,
                     tokens_per_step: int | None = None) -> ImportedSpec:
    """The spec dict for fine-tuning the model at `config_or_dir` (an HF folder or its config.json),
    to be written at `spec_file`; see the module docstring."""
    given = Path(config_or_dir)
    folder = given if given.is_dir() else given.parent
    config_file = given / "config.json" if given.is_dir() else given
    # A LoRA spec gets its own name, and so its own run folder beside the full fine-tuning one.
    loaded = spec_from_hf_config(given, name=name or model_name(folder, config_file) + ("_lora" if lora else ""))
    family = family_named(loaded.model["family"])
    settings = family.fine_tuning_settings(lora=lora)
    train = settings["train"]
    if steps is not None:  # a shorter run warms up and checkpoints within its steps
        schedule, checkpoint = train.setdefault("schedule", {}), train.setdefault("checkpoint", {})
        train["steps"] = steps
        schedule["warmup_steps"] = min(schedule.get("warmup_steps", 0), steps // 10)
        checkpoint["every"] = min(checkpoint.get("every", steps), steps)
    if tokens_per_step is not None:
        train["tokens_per_step"] = tokens_per_step
    relative = _relative_to(spec_file.absolute().parent)
    notes = []
    has_weights = any((folder / weights).is_file() for weights in WEIGHT_FILES)
    if has_weights:
        train = {"init_from": relative(folder), **train}
    else:
        notes.append(f"{folder} holds no safetensors weights ({' or '.join(WEIGHT_FILES)}): the spec trains from random init; "
                     "set train.init_from to the model folder to fine-tune it")
    data_section: dict = {"sources": [{"path": relative(path)} for path in data]}
    if (folder / "tokenizer.json").is_file():
        data_section["tokenizer"] = relative(folder)
    if not data:
        notes.append("no data yet: list your JSONL files under data.sources (or pass --data FILE), "
                     "e.g. a chat per line: {\"messages\": [{\"role\": \"user\", \"content\": ...}, ...]}")
    spec = {"name": loaded.name, "model": loaded.model, **deep_merge(settings, {"train": train}), "data": data_section}
    return ImportedSpec(spec=spec, notes=notes)


def model_name(folder: Path, config_file: Path) -> str:
    """The model's name for its spec and run folder (see the module docstring), as a spec name."""
    name_or_path = _read_name_or_path(config_file)
    folder = folder.absolute()
    if name_or_path:
        raw = Path(name_or_path).name
    elif (folder.parent / RESOLVED_SPEC_FILE).is_file():  # runs/<name>/hf
        raw = folder.parent.name
    elif _SNAPSHOT.match(folder.name) and folder.parent.name == "snapshots" and "--" in folder.parent.parent.name:
        raw = folder.parent.parent.name.rsplit("--", 1)[-1]  # models--Qwen--Qwen3.5-4B
    else:
        raw = folder.name if config_file.name == "config.json" else config_file.stem
    cleaned = re.sub(r"_+", "_", "".join(c if c.isalnum() else "_" for c in raw.lower())).strip("_")
    return cleaned or "imported"


def _read_name_or_path(config_file: Path) -> str | None:
    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None  # spec_from_hf_config reports an unreadable config
    return value if isinstance(value, str) and value.strip() else None


def _relative_to(folder: Path):  # noqa: ANN202
    """A function writing a path (given relative to the working directory) relative to `folder`."""
    def relative(path: Path) -> str:
        return Path(os.path.relpath(Path(path).absolute(), folder)).as_posix()
    return relative
