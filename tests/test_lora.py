"""LoRA (`train.adapters`) on the tiny Qwen3.5 spec, end to end through the CLI, against PEFT and
transformers as the oracle.

One LoRA run (module fixture): a random base exported as an HF folder, `assemble train` with
`train.init_from` = that folder and adapters on every linear layer of both text layer types and the
vision tower, then `assemble export --adapter` and `--merge`. Then:
- the loss falls; every base tensor of the final checkpoint is bitwise the base folder's; the
  optimizer state holds the adapters only;
- `peft.PeftModel.from_pretrained(<transformers Qwen3_5ForConditionalGeneration>, adapter folder)`
  gives our LoRA model's logits bitwise (the same fp32 ops: W x, then B (A x) scaled, added);
- the merged export loads in transformers; its logits equal PEFT's within a relative error of 1e-5.
  Why not bitwise: merging computes (W + s·B A) x where the adapter path computes W x + s·B (A x),
  a re-association in fp32 (unit roundoff 6e-8) over 4 text layers, a 2-block vision tower and the
  248,320-way head; measured 3.2e-7. The adapters' own effect on the logits is 0.26 relative (> 1e-2 asserted),
  so a dropped or mis-scaled adapter fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from transformers import Qwen3_5ForConditionalGeneration

from assembler import load_spec
from assembler.adapters.lora import add_lora_adapters, lora_modules, prepare_adapters
from assembler.adapters.peft_folder import read_adapter_folder
from assembler.model.build import build_model
from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from assembler.spec.sections import AdapterSettings
from assembler.train.checkpoint import load_model_weights
from cli import assemble

peft = pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
STEPS = 8
RANK, ALPHA = 4, 8
ADAPTERS = f"train.adapters={{rank: {RANK}, alpha: {ALPHA}, dropout: 0.05, targets: ['*']}}"
FAST = ["-o", "train.tokens_per_step=64", "-o", "data.packing.length=64", "-o", "train.log_every=1",
        "-o", "train.schedule.warmup_steps=1", "-o", "ops.backend=hf"]
TOKENS = dict(image=248056, vision_start=248053, vision_end=248054)


def _invoke(args: list[str]):
    return CliRunner().invoke(assemble, args)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    spec = load_spec(TINY, ["ops.backend=hf"])
    base_dir = save_hf_checkpoint(build_model(spec, seed=0), root / "base", spec, dtype=torch.float32)
    run_dir = root / "run"
    result = _invoke(["train", str(TINY), *FAST, "-o", f"train.steps={STEPS}", "-o", f"train.checkpoint.every={STEPS}",
                      "-o", f"train.init_from={base_dir}", "-o", ADAPTERS, "--output-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    for flag, out in (("--adapter", root / "adapter"), ("--merge", root / "merged")):
        exported = _invoke(["export", str(run_dir), str(out), flag, "--dtype", "float32"])
        assert exported.exit_code == 0, exported.output
    checkpoint = run_dir / "checkpoints" / f"step_{STEPS:06d}"
    return dict(root=root, base=base_dir, run=run_dir, checkpoint=checkpoint, adapter=root / "adapter",
                merged=root / "merged", output=result.output, spec=load_spec(run_dir / "resolved_spec.yaml"))


def _our_lora_model(run) -> nn.Module:
    """The run's final LoRA model (base + adapters) from its DCP checkpoint, eval mode."""
    model = build_model(run["spec"], seed=123)
    prepare_adapters(model, run["spec"], initialize=False)
    load_model_weights(run["checkpoint"], model)
    return model.eval()


def _inputs() -> dict[str, torch.Tensor]:
    """One row: text, a 4 x 4-patch image (4 merged tokens) between vision markers, text."""
    generator = torch.Generator().manual_seed(0)
    text = lambda n: torch.randint(0, 240000, (n,), generator=generator)  # noqa: E731
    image = torch.tensor([TOKENS["vision_start"]] + [TOKENS["image"]] * 4 + [TOKENS["vision_end"]])
    return dict(input_ids=torch.cat([text(7), image, text(9)])[None], pixel_values=torch.randn(16, 3 * 2 * 16 * 16, generator=generator),
                image_grid_thw=torch.tensor([[1, 4, 4]]))


@torch.no_grad()
def _transformers_logits(model: nn.Module) -> torch.Tensor:
    inputs = _inputs()
    return model(**inputs, mm_token_type_ids=(inputs["input_ids"] == TOKENS["image"]).int()).logits


def _transformers(folder: Path) -> Qwen3_5ForConditionalGeneration:
    return Qwen3_5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def test_lora_training_lowers_the_loss(run):
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run["run"] / "metrics.jsonl").read_text().splitlines())}
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = (losses[1] + losses[2]) / 2, (losses[STEPS - 1] + losses[STEPS]) / 2
    assert last < first - 0.1, losses


def test_only_the_adapters_train_and_are_counted(run):
    summary = json.loads((run["run"] / "summary.json").read_text())["parameters"]
    base = Qwen3_5ForConditionalGeneration.from_pretrained(run["base"], dtype=torch.float32)
    linears = [m for name, m in base.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"]
    expected_trainable = sum(RANK * (m.in_features + m.out_features) for m in linears)
    assert summary == {"trainable": expected_trainable, "total": base.num_parameters() + expected_trainable}
    assert f"parameters: {expected_trainable:,} trainable of" in run["output"]


def test_base_weights_stay_bitwise_and_only_adapters_have_optimizer_state(run):
    base = _tensors(run["base"])
    state = _our_lora_model(run).state_dict()
    adapters = {name for name in state if ".lora_" in name}
    assert {n for n in state if n not in adapters} == set(base) | {"lm_head.weight"}  # tied: same tensor
    changed = [name for name, tensor in base.items() if not torch.equal(state[name], tensor)]
    assert changed == []
    trained_b = [name for name in adapters if name.endswith("lora_B.weight") and state[name].abs().max() > 0]
    assert len(trained_b) == len(adapters) // 2  # every B left zero
    keys = FileSystemReader(str(run["checkpoint"])).read_metadata().state_dict_metadata
    with_state = {key.removeprefix("optimizer.state.").rsplit(".", 1)[0] for key in keys if key.startswith("optimizer.state.")}
    assert with_state == adapters


def test_peft_on_a_transformers_base_gives_our_logits(run):
    config = json.loads((run["adapter"] / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["bias"]) == ("LORA", RANK, ALPHA, "none")
    base = _transformers(run["base"])
    base_logits = _transformers_logits(base)
    peft_logits = _transformers_logits(peft.PeftModel.from_pretrained(base, run["adapter"]).eval())
    inputs = _inputs()
    with torch.no_grad():
        ours = _our_lora_model(run)(**inputs, return_logits=True).logits
    assert torch.equal(ours, peft_logits)
    print(f"PEFT vs base: relative difference {_relative_error(peft_logits, base_logits):.2e}")
    assert _relative_error(peft_logits, base_logits) > 1e-2  # the adapters matter, far above the tolerance


def test_merged_export_loads_in_transformers_with_the_adapted_logits(run):
    merged = _transformers(run["merged"])
    merged_logits = _transformers_logits(merged)
    peft_logits = _transformers_logits(peft.PeftModel.from_pretrained(_transformers(run["base"]), run["adapter"]).eval())
    print(f"merged vs PEFT: relative error {_relative_error(merged_logits, peft_logits):.2e}")
    assert _relative_error(merged_logits, peft_logits) <= 1e-5
    spec = load_spec(TINY, ["ops.backend=hf"])  # the base model's spec: no adapters
    ours = build_model(spec, device="meta")
    load_hf_checkpoint(ours, run["merged"], spec)
    ours.tie_weights()
    with torch.no_grad():
        assert torch.equal(ours.eval()(**_inputs(), return_logits=True).logits, merged_logits)
    # The run's own end-of-training export is that merged model too.
    run_export, cli_export = _tensors(run["run"] / "hf"), _tensors(run["merged"])
    assert run_export.keys() == cli_export.keys() and all(torch.equal(run_export[k], cli_export[k]) for k in cli_export)


def test_adapter_init_from_starts_from_the_folder(run, tmp_path):
    spec = load_spec(TINY, ["ops.backend=hf", f"train.init_from={run['base']}", ADAPTERS,
                            f"train.adapters.init_from={run['adapter']}"])
    from assembler.parallel.distributed import init_world
    from assembler.train.loop import build_for_world

    model = build_for_world(spec, init_world())
    saved = {k.removeprefix("base_model.model."): v for k, v in _tensors(run["adapter"]).items()}
    state = model.state_dict()
    assert len(saved) == 2 * len(lora_modules(model)) > 0
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    # and the run continues from them through the CLI
    result = _invoke(["train", str(TINY), *FAST, "-o", "train.steps=1", "-o", "train.checkpoint.every=0", "-o", "train.export_hf=false",
                      "-o", f"train.init_from={run['base']}", "-o", ADAPTERS, "-o", f"train.adapters.init_from={run['adapter']}",
                      "--output-dir", str(tmp_path / "continued")])
    assert result.exit_code == 0, result.output


def test_adapter_folder_of_another_rank_is_refused(run):
    model = build_model(run["spec"], device="meta")
    add_lora_adapters(model, {"rank": 2, "targets": ["*"]})
    with pytest.raises(CheckpointError, match=r"r is 4 but train.adapters.rank is 2"):
        read_adapter_folder(run["adapter"], model, AdapterSettings.of({"rank": 2, "targets": ["*"]}))


def test_a_target_glob_matching_no_linear_layer_exits_2(tmp_path):
    result = _invoke(["train", str(TINY), *FAST, "-o", "train.steps=1", "-o", "train.adapters={targets: ['*.self_attn.*', '*.qproj']}",
                      "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "train.adapters.targets[1]: '*.qproj' matches no linear layer" in result.output
    assert "targets[0]" not in result.output and "Traceback" not in result.output


def test_export_flags_are_refused_where_they_do_not_apply(run, tmp_path):
    both = _invoke(["export", str(run["run"]), str(tmp_path / "x"), "--adapter", "--merge"])
    assert both.exit_code == 2 and "choose one" in both.output
    from_hf = _invoke(["export", str(run["merged"]), str(tmp_path / "y"), "--adapter"])
    assert from_hf.exit_code == 2 and "--adapter needs a LoRA run's checkpoint" in from_hf.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_lora_run_resumes_bitwise(run, tmp_path):
    """Killed-and-resumed is tested generically (test_train_resume.py); here: a LoRA run stopped at
    step 1 and continued to 2 logs the losses of a straight 2-step run, to the bit."""
    common = ["train", str(TINY), *FAST, "-o", "train.export_hf=false", "-o", "train.checkpoint.every=1",
              "-o", f"train.init_from={run['base']}", "-o", ADAPTERS]  # dropout 0.05: its RNG resumes too
    straight = _invoke([*common, "-o", "train.steps=2", "--output-dir", str(tmp_path / "straight")])
    first = _invoke([*common, "-o", "train.steps=1", "--output-dir", str(tmp_path / "resumed")])
    resumed = _invoke([*common, "-o", "train.steps=2", "--output-dir", str(tmp_path / "resumed")])
    assert straight.exit_code == first.exit_code == resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output
    losses = lambda d: [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
