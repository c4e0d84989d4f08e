"""Spec <-> HuggingFace `config.json`, for any registered model family.

`spec_from_hf_config` reads a config.json (or a transformers config's `to_dict()`) into a Spec:
the family is the one whose `hf_model_types` holds the config's `model_type`, and it reads the
model section (refusing, by field, whatever the spec cannot represent). `hf_config_from_spec`
writes the config.json transformers loads for a spec's model, through the spec's family.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from assembler.model.family import family_for_hf_model_type, family_of, registered_families
from assembler.spec import Spec
from assembler.spec.errors import Problem, SpecError
from assembler.spec.loading import load_spec_from_dict

DEFAULT_HF_MODEL_TYPE = "qwen3_5"  # what a config.json without `model_type` is read as


def spec_from_hf_config(config: dict | str | os.PathLike, name: str | None = None) -> Spec:
    """A Spec whose model is the one `config` describes (a config dict, a config.json, or its folder).

    Fields a config omits take transformers' defaults; `ops`, `parallel`, `train` and `data` take
    the spec defaults. Refuses (SpecError naming the field) what a spec cannot represent.
    """
    config, where = _read_config(config)
    model_type = config.get("model_type", DEFAULT_HF_MODEL_TYPE)
    family = family_for_hf_model_type(model_type) if isinstance(model_type, str) else None
    if family is None:
        readable = sorted(t for f in registered_families().values() for t in f.hf_model_types)
        hint = ("mixture-of-experts models are not supported" if "moe" in str(model_type)
                else f"the model types assemble reads: {', '.join(readable)}")
        raise SpecError(Problem("model_type", f"{model_type!r} cannot be represented", hint, model_type, file=where))
    model, problems = family.model_from_hf(config, where)
    if problems:
        raise SpecError(problems)
    model = {"family": family.name, **model}
    spec_name = name or (_name_from_path(where) if where else "imported")
    try:
        return load_spec_from_dict({"name": spec_name, "model": model})
    except SpecError as error:
        raise (error.with_file(where) if where else error) from None


def hf_config_from_spec(spec: Spec, dtype: str = "bfloat16") -> dict:
    """The config.json dict transformers loads for `spec.model` (its family's HF class)."""
    return family_of(spec).hf_config(spec, dtype)


def _read_config(config: dict | str | os.PathLike) -> tuple[dict, str | None]:
    """The config dict and the file it came from (None for a dict)."""
    if isinstance(config, dict):
        return config, None
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    where = str(path)
    if not path.is_file():
        raise SpecError(Problem("", "no such file", "pass an HF config.json or the model folder holding one", file=where))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SpecError(Problem("", f"JSON syntax error: {error.msg}", file=where, line=error.lineno, column=error.colno)) from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise SpecError(Problem("", "JSON nested too deeply to read", "a config.json is a few levels deep", file=where)) from None
    except UnicodeDecodeError as error:
        raw = path.read_bytes()
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise SpecError(Problem("", f"not UTF-8 text (byte 0x{raw[error.start]:02x} cannot be decoded)",
                                "JSON files are UTF-8: re-save the file as UTF-8", file=where, line=line, column=column)) from None
    if not isinstance(data, dict):
        raise SpecError(Problem("", f"a config.json must hold an object, got {type(data).__name__}", file=where))
    return data, where


def _name_from_path(where: str) -> str:
    path = Path(where)
    stem = path.parent.name if path.name == "config.json" else path.stem
    cleaned = "".join(c if c.isalnum() else "_" for c in stem.lower()).strip("_")
    return cleaned or "imported"
