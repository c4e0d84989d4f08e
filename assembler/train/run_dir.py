"""The run folder: where a run's resolved spec, metrics, checkpoints and HF export live.

Default: `runs/<spec name>` under the working directory (`train.output_dir` or `--output-dir`
choose another). The resolved spec is saved there, so a run can be reproduced from its folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from assembler.spec_errors import UserError

RESOLVED_SPEC_FILE = "resolved_spec.yaml"


class RunFolderError(UserError):
    """The run folder belongs to a different model (a user error)."""


def run_folder(spec_name: str, output_dir: str | Path | None, cwd: Path | None = None) -> Path:
    """`output_dir` when given, else `runs/<spec_name>` under `cwd` (the working directory)."""
    if output_dir is not None:
        return Path(output_dir)
    return (cwd or Path.cwd()) / "runs" / spec_name


def check_same_model(folder: Path, resolved_spec_yaml: str) -> None:
    """Refuse to resume into a folder whose saved spec describes a different model.

    Training settings may change between runs of one folder (more steps, another lr); the model may
    not, or its checkpoints would not load.
    """
    saved = folder / RESOLVED_SPEC_FILE
    if not saved.is_file():
        return
    old_model = (yaml.safe_load(saved.read_text()) or {}).get("model")
    new_model = (yaml.safe_load(resolved_spec_yaml) or {}).get("model")
    if old_model != new_model:
        raise RunFolderError(
            f"run folder {folder} holds a run of a different model (its {RESOLVED_SPEC_FILE} differs in `model:`); "
            "choose another folder with --output-dir or remove this one"
        )


def save_resolved_spec(folder: Path, resolved_spec_yaml: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESOLVED_SPEC_FILE
    path.write_text(resolved_spec_yaml, encoding="utf-8")
    return path
