"""`train.freeze` through `assemble train` on the tiny spec: frozen parameters are bitwise their
initial values in the final checkpoint and have no optimizer state; the rest train; the summary
counts trainable / total; a glob matching nothing exits 2 naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.distributed.checkpoint import FileSystemReader

from assembler import load_spec
from assembler.model.build import build_model
from assembler.train.checkpoint import load_model_weights
from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
STEPS = 3
FREEZE = ["model.visual.*", "model.language_model.layers.0.*"]
FAST = ["-o", "train.tokens_per_step=64", "-o", "data.packing.length=64", "-o", "train.log_every=1", "-o", "train.export_hf=false",
        "-o", "train.schedule.warmup_steps=1", "-o", "ops.backend=hf"]


def _frozen(name: str) -> bool:
    return name.startswith(("model.visual.", "model.language_model.layers.0."))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("freeze") / "run"
    result = CliRunner().invoke(assemble, ["train", str(TINY), *FAST, "-o", f"train.steps={STEPS}", "-o", f"train.checkpoint.every={STEPS}",
                                           "-o", f"train.freeze={json.dumps(FREEZE)}", "--output-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    return dict(run=run_dir, checkpoint=run_dir / "checkpoints" / f"step_{STEPS:06d}", output=result.output)


def test_frozen_parameters_are_bitwise_their_initial_values_and_the_rest_train(run):
    spec = load_spec(TINY, ["ops.backend=hf"])
    initial = build_model(spec, seed=int(spec.train["seed"])).state_dict()  # what the run drew from train.seed
    trained = build_model(spec, seed=123)
    load_model_weights(run["checkpoint"], trained)
    final = trained.state_dict()
    frozen = [name for name in initial if _frozen(name)]
    assert len(frozen) > 20
    assert [name for name in frozen if not torch.equal(final[name], initial[name])] == []
    others = [name for name in initial if not _frozen(name) and name.endswith("weight") and "norm" not in name]
    assert all(not torch.equal(final[name], initial[name]) for name in others), "the unfrozen weights should train"


def test_frozen_parameters_have_no_optimizer_state(run):
    keys = FileSystemReader(str(run["checkpoint"])).read_metadata().state_dict_metadata
    with_state = {key.removeprefix("optimizer.state.").rsplit(".", 1)[0] for key in keys if key.startswith("optimizer.state.")}
    names = [name for name, _ in build_model(load_spec(TINY), device="meta").named_parameters()]
    assert with_state == {name for name in names if not _frozen(name)}


def test_the_summary_counts_trainable_and_total_parameters(run):
    model = build_model(load_spec(TINY), device="meta")
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for name, p in model.named_parameters() if _frozen(name))
    summary = json.loads((run["run"] / "summary.json").read_text())["parameters"]
    assert summary == {"trainable": total - frozen, "total": total}
    assert f"parameters: {total - frozen:,} trainable of {total:,}" in run["output"]


def test_adapter_export_of_a_run_without_adapters_exits_2(run, tmp_path):
    result = CliRunner().invoke(assemble, ["export", str(run["run"]), str(tmp_path / "out"), "--adapter"])
    assert result.exit_code == 2, result.output
    assert "a run trained without train.adapters" in result.output and not (tmp_path / "out").exists()


def test_a_freeze_glob_matching_nothing_exits_2(tmp_path):
    result = CliRunner().invoke(assemble, ["train", str(TINY), *FAST, "-o", "train.steps=1",
                                           "-o", "train.freeze=['model.visual.*', 'model.vision.*']", "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "train.freeze[1]: 'model.vision.*' matches no parameter of this model" in result.output
    assert "train.freeze[0]" not in result.output and "Traceback" not in result.output


def test_a_changed_freeze_list_is_refused_on_resume(run):
    result = CliRunner().invoke(assemble, ["train", str(TINY), *FAST, "-o", f"train.steps={STEPS + 1}",
                                           "-o", "train.freeze=['model.visual.*']", "--output-dir", str(run["run"])])
    assert result.exit_code == 2, result.output
    assert "train.freeze" in result.output


def test_freezing_every_parameter_exits_2(tmp_path):
    result = CliRunner().invoke(assemble, ["train", str(TINY), *FAST, "-o", "train.steps=1", "-o", "train.freeze=['*']",
                                           "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "train.freeze: freezes every parameter: nothing would train" in result.output


def test_validate_reports_a_freeze_glob_matching_nothing_without_training():
    result = CliRunner().invoke(assemble, ["validate", str(TINY), "-o", "train.freeze=['model.vision.*']"])
    assert result.exit_code == 2, result.output
    assert "qwen3_5_tiny.yaml: train.freeze[0]: 'model.vision.*' matches no parameter" in result.output
