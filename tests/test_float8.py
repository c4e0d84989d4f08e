"""Float8 matmuls (`parallel.precision.matmul: float8_rowwise`, torchao's rowwise recipe): which
layers multiply in float8, that names and checkpoints do not change, how close the loss and the
gradients stay to the model's own precision, and the clear refusals. torch's `_scaled_mm` runs
float8 on the CPU too, so all of this runs here; speed is the GPU's (BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from assembler import build_model, load_spec
from assembler.bench.workload import ImageSpec, synthetic_row
from assembler.parallel.float8 import check_precision_can_run
from assembler.parallel.parallelize import parallelize
from assembler.spec.errors import SpecError, UserError
from assembler.train.loop import train
from cli import assemble

pytest.importorskip("torchao", reason="float8 matmuls need torchao (in the test extra: pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
FLOAT8 = "parallel.precision.matmul=float8_rowwise"
# float8 e4m3 keeps 3 mantissa bits: each operand of every forward and backward matmul is rounded by
# up to 2^-4 relative (its row's scale aside). The step's gradient as a whole moved 5.3e-2 relative
# from the model's own (fp32 or bf16) on the tiny spec; a dropped scale or a wrong operand is off by
# far more than the bound (order 1). The loss is an average over tokens and moves much less.
GRAD_RTOL = 0.1
LOSS_RTOL = 1e-3


def _model(overrides: list[str], dtype: torch.dtype = torch.float32):
    spec = load_spec(TINY, ["ops.backend=hf", *overrides])
    model = build_model(spec, dtype=dtype, seed=0)
    parallelize(model, spec)
    return model


def _loss_and_gradient(model) -> tuple[float, torch.Tensor]:
    spec = load_spec(TINY)
    row, _ = synthetic_row(spec.model, 256, layout="packed", images=ImageSpec(count=1, height=64, width=64))
    out = model(**{key: row[key] for key in ("input_ids", "shift_labels", "pixel_values", "image_grid_thw", "packing")})
    out.loss.backward()
    return out.loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


def test_float8_swaps_the_text_layers_16_aligned_linears_only_and_keeps_every_name():
    plain, float8 = _model([]), _model([FLOAT8])
    swapped = {name for name, module in float8.named_modules() if type(module).__name__ == "Float8Linear"}
    assert not any(type(module).__name__ == "Float8Linear" for module in plain.modules())
    assert "model.language_model.layers.3.self_attn.q_proj" in swapped and "model.language_model.layers.0.mlp.down_proj" in swapped
    assert all(name.startswith("model.language_model.layers.") for name in swapped)  # not the vision tower
    linears = {name: module for name, module in float8.named_modules() if isinstance(module, torch.nn.Linear)}
    for name, module in linears.items():
        aligned = module.in_features % 16 == 0 and module.out_features % 16 == 0
        assert (name in swapped) == (aligned and name.startswith("model.language_model.layers.")), name
    assert any(name.startswith("model.visual.") for name in linears)
    assert all(block.parallel_policy.float8 == block.parallel_policy.name.startswith("model.language_model")
               for block in float8.modules() if hasattr(block, "parallel_policy"))
    # Checkpoints and HF exports read the same names and tensors.
    assert list(float8.state_dict()) == list(plain.state_dict())
    float8.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float8_loss_and_gradient_stay_within_float8_rounding_of_the_models_own(dtype):
    loss, gradient = _loss_and_gradient(_model([], dtype))
    loss8, gradient8 = _loss_and_gradient(_model([FLOAT8], dtype))
    assert abs(loss8 - loss) / abs(loss) < LOSS_RTOL
    error = ((gradient8 - gradient).norm() / gradient.norm()).item()
    assert 0 < error < GRAD_RTOL  # > 0: the matmuls did run in float8


def test_assemble_train_trains_the_tiny_spec_in_float8(tmp_path):
    spec = load_spec(TINY, [FLOAT8, "train.steps=3", "train.tokens_per_step=128", "data.packing.length=128",
                            "train.export_hf=false", "train.checkpoint.every=0"])
    log = io.StringIO()
    result = train(spec, output_dir=tmp_path / "run", stream=log)
    assert "matmuls: float8 with rowwise scales (torchao)" in log.getvalue()
    assert sorted(result.losses) == [1, 2, 3] and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert "float8_rowwise" in (result.run_dir / "resolved_spec.yaml").read_text()


def test_float8_without_torchao_is_refused_up_front_naming_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(UserError, match="pip install torchao"):
        check_precision_can_run(load_spec(TINY, [FLOAT8]), "cpu")
    check_precision_can_run(load_spec(TINY), "cpu")  # the default needs nothing


def test_float8_with_lora_adapters_is_a_spec_error():
    with pytest.raises(SpecError, match="float8_rowwise cannot be combined with LoRA"):
        load_spec(ROOT / "specs" / "qwen3_5_tiny_lora.yaml", [FLOAT8])
    result = CliRunner().invoke(assemble, ["validate", str(ROOT / "specs" / "qwen3_5_tiny_lora.yaml"), "-o", FLOAT8])
    assert result.exit_code == 2 and "parallel.precision.matmul" in result.output


def test_op_level_checkpointing_keeps_float8_matmul_outputs_as_it_keeps_bf16_ones():
    from assembler.parallel.parallelize import KEPT_OP_PREFIXES

    for matmul in (torch.ops.aten.mm.default, torch.ops.aten._scaled_mm.default):
        assert str(matmul).startswith(KEPT_OP_PREFIXES), matmul
