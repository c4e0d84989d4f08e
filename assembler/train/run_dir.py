"""The run folder: where a run's resolved spec, metrics, checkpoints and HF export live.

Default: `runs/<spec name>` under the working directory (`train.output_dir` or `--output-dir`
choose another). The resolved spec is saved there, so a run can be reproduced from its folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from assembler.common.durable_files import replace_durably
from assembler.spec.errors import UserError

RESOLVED_SPEC_FILE = "resolved_spec.yaml"
HF_EXPORT_FOLDER = "hf"  # the run's own HF export (train.export_hf)
ADAPTER_EXPORT_FOLDER = "adapter"  # a LoRA run's adapters as a PEFT folder, beside the merged hf/


class RunFolderError(UserError):
    """The run folder belongs to a different model (a user error)."""


def run_folder(spec_name: str, output_dir: str | Path | None, cwd: Path | None = None) -> Path:
    """`output_dir` when given, else `runs/<spec_name>` under `cwd` (the working directory)."""
    if output_dir is not None:
        return Path(output_dir)
    return (cwd or Path.cwd()) / "runs" / spec_name


def check_same_model(folder: Path, resolved_spec_yaml: str) -> None:
    """Refuse to resume into a folder whose saved spec describes a different model.

    Training settings may change between runs of one folder (more steps, another lr: see
    `resume_changes`); the model may not, or its checkpoints would not load.
    """
    saved = folder / RESOLVED_SPEC_FILE
    if not saved.is_file():
        return
    old_model = read_saved_spec(saved, "the run folder is damaged: remove it, or choose another with --output-dir").get("model")
    new_model = (yaml.safe_load(resolved_spec_yaml) or {}).get("model")
    if old_model != new_model:
        raise RunFolderError(
            f"run folder {folder} holds a run of a different model (its {RESOLVED_SPEC_FILE} differs in `model:`); "
            "choose another folder with --output-dir or remove this one"
        )


# Fields a resume cannot change: the model (its checkpoint would not load), and what the saved data
# position counts in (tokenizer, packing, row length, shuffling, seed, the samples' targets and
# image and video sizes, the packing window): with another value the batches would not continue the saved run. The trained
# parameters (adapters, freeze) too: the checkpoint's tensors and optimizer state are theirs.
FIXED_ON_RESUME = (
    "model", "data.tokenizer", "data.packing", "data.loss_on", "data.images", "data.videos", "data.shuffle",
    "train.tokens_per_step", "train.seed", "train.dtype", "train.freeze", "train.adapters",
)
# Changes that do nothing on resume, so are not reported (a checkpoint already holds the adapters).
IGNORED_ON_RESUME = ("name", "train.output_dir", "train.init_from", "train.adapters.init_from")


def resume_changes(saved_spec: Path, resolved_spec_yaml: str, step: int) -> list[str]:
    """What the spec in force now changes against the checkpoint's saved spec, one line per field
    ("train.optimizer.lr 5e-3 → 1e-4 from step 3"). A change to a FIXED_ON_RESUME field raises
    RunFolderError naming every such field; so does `train.steps` below the checkpoint's step."""
    if not Path(saved_spec).is_file():
        return []  # a checkpoint from before specs were saved with it: nothing to compare
    old = read_saved_spec(Path(saved_spec), "the checkpoint is damaged, resume from another one")
    new = yaml.safe_load(resolved_spec_yaml) or {}
    changed = [(key, a, b) for key, a, b in _differences(old, new) if not key.startswith(IGNORED_ON_RESUME)]
    fixed = [(key, a, b) for key, a, b in changed if any(key == f or key.startswith(f + ".") for f in FIXED_ON_RESUME)]
    if fixed:
        lines = "\n".join(f"  {key}: {_show(a)} in the checkpoint, {_show(b)} now" for key, a, b in fixed[:20])
        more = f"\n  ... and {len(fixed) - 20} more" if len(fixed) > 20 else ""
        raise RunFolderError(
            f"cannot resume from {saved_spec.parent}: these fields differ from the spec it was written with and "
            f"cannot change during a run:\n{lines}{more}\n"
            "Resume with the checkpoint's values (its resolved_spec.yaml), or start a new run with --output-dir "
            "(train.init_from can start it from an HF export of this one)"
        )
    total = new.get("train", {}).get("steps")
    if isinstance(total, int) and total < step:
        raise RunFolderError(
            f"train.steps is {total} but the checkpoint {saved_spec.parent} is at step {step}. To continue that run, "
            f"set train.steps to at least {step}, or resume from an earlier checkpoint with --resume; to start a new run "
            "instead, give it its own folder: --output-dir DIR, or another name (-o name=NEW, run folder runs/NEW)"
        )
    return [f"{key} {_show(a)} → {_show(b)} from step {step + 1}" for key, a, b in changed]


def read_saved_spec(path: Path, what_to_do: str) -> dict:
    """The mapping of a resolved_spec.yaml this program wrote; RunFolderError (saying `what_to_do`)
    when the file no longer holds one."""
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise RunFolderError(f"{path}: cannot be read ({error}); {what_to_do}") from None
    if not isinstance(saved, dict):
        raise RunFolderError(f"{path}: holds a {type(saved).__name__}, not a spec; {what_to_do}")
    return saved


def _differences(old, new, prefix: str = ""):
    """(dotted key, old value, new value) of every leaf that differs; lists compare whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from _differences(old.get(key), new.get(key), f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif old != new:
        yield prefix, old, new


def _show(value) -> str:
    """5e-3 rather than 0.005: how a person writes an lr."""
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return "null" if value is None else str(value)


def save_resolved_spec(folder: Path, resolved_spec_yaml: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESOLVED_SPEC_FILE
    replace_durably(path, resolved_spec_yaml.encode("utf-8"))  # a kill here must not leave half a spec
    return path
