"""A new mixer block from this file alone (issue 13: a block is one file plus one registration):
registered here, with no edit of the schema, the registry's list or the assembler, it is named by
a spec, validated and default-filled from its own `settings_schema`, built, trained on the CPU by
the real training loop, and counted in the FLOPs by its own `flops_per_token`."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from assembler import SpecError, build_model, load_spec_from_dict
from assembler.train.checkpoint import load_model_weights
from assembler.train.loop import train
from assembler.train.metrics import attention_flops_per_token
from blocks.context import TextContext
from blocks.registry import register, registered_blocks, unregister
from blocks.settings import SettingProblem

SPECS = Path(__file__).resolve().parents[1] / "specs"
MIXER_NAME = "my_test_mixer"
MAX_WINDOW = 8
STEPS = 6


class CausalWindowMean(nn.Module):
    """[B, T, H] -> [B, T, H]: out_proj of the mean of in_proj(x) over each token's last `window`
    tokens (itself included), never reaching back across a document boundary of the packing."""

    hf_attribute = "window_mean"  # its attribute in the decoder layer (no HF checkpoint has one)
    settings_schema = {
        "description": "Causal mean over a window of previous tokens of the same document, between two projections.",
        "properties": {
            "window": {"type": "integer", "description": "Tokens averaged, the current one included.", "minimum": 1,
                       "default": 3},
        },
        "required": [],
    }

    @staticmethod
    def flops_per_token(settings: dict, hidden_size: int, seq_len: int) -> float:
        """The window's adds (window per channel), forward and twice that backward."""
        return float(3 * settings["window"] * hidden_size)

    @staticmethod
    def settings_problems(settings: dict) -> Iterator[SettingProblem]:
        """A relation between settings the schema cannot state (here: a window a toy can afford)."""
        if settings["window"] > MAX_WINDOW:
            yield SettingProblem("window", f"{settings['window']} is wider than {MAX_WINDOW}", "use a smaller window",
                                 settings["window"], f"at most {MAX_WINDOW}")

    def __init__(self, *, hidden_size: int, ops, window: int) -> None:  # noqa: ANN001 (the op table, unused)
        super().__init__()
        self.window = window
        self.in_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        values = self.in_proj(hidden_states)  # [B, T, H]
        document = ctx.packing.seq_idx  # [B, T]
        batch, length = document.shape
        total = torch.zeros_like(values)
        count = values.new_zeros(batch, length, 1)
        for offset in range(min(self.window, length)):
            # Token t - offset, where it exists and belongs to token t's document.
            earlier = torch.cat([values.new_zeros(batch, offset, values.shape[-1]), values[:, : length - offset]], dim=1)
            earlier_document = torch.cat([document.new_full((batch, offset), -1), document[:, : length - offset]], dim=1)
            same = (earlier_document == document).unsqueeze(-1).to(values.dtype)  # [B, T, 1]
            total = total + earlier * same
            count = count + same
        return self.out_proj(total / count)


@pytest.fixture
def custom_mixer():
    """CausalWindowMean registered as mixer/my_test_mixer for one test, then unregistered."""
    builtin = registered_blocks()
    register("mixer", MIXER_NAME)(CausalWindowMean)
    yield CausalWindowMean
    unregister("mixer", MIXER_NAME)
    assert registered_blocks() == builtin


def spec_dict(**train: object) -> dict:
    """The tiny spec with a third layer type, `mean`, at layer 1, whose mixer is the test's block."""
    return {
        "extends": "qwen3_5_tiny.yaml",
        "name": "custom_mixer",
        "model": {"text": {
            "layers": ["linear", "mean", "linear", "full"],
            "layer_types": {"mean": {"mixer": {"block": MIXER_NAME}, "mlp": {"block": "swiglu", "intermediate_size": 128}}},
        }},
        "train": {"export_hf": False, **train},
    }


def load(data: dict):
    # As if the spec were a file in specs/: `extends` and the data paths resolve from there.
    return load_spec_from_dict(data, source=SPECS / "custom_mixer.yaml")


def test_the_registered_mixer_is_validated_and_filled_from_its_own_schema(custom_mixer):
    spec = load(spec_dict())
    assert spec.model["text"]["layer_types"]["mean"]["mixer"] == {"block": MIXER_NAME, "window": 3}  # its default
    assert "mean" in spec.parallel["compile"]  # a compile policy for the new layer type too

    typo = spec_dict()
    typo["model"]["text"]["layer_types"]["mean"]["mixer"]["windw"] = 2
    with pytest.raises(SpecError, match=r"layer_types\.mean\.mixer\.windw: unknown key — did you mean 'window'\?"):
        load(typo)
    too_small = spec_dict()
    too_small["model"]["text"]["layer_types"]["mean"]["mixer"]["window"] = 0
    with pytest.raises(SpecError, match=r"layer_types\.mean\.mixer\.window: 0 is below the minimum 1"):
        load(too_small)
    too_wide = spec_dict()
    too_wide["model"]["text"]["layer_types"]["mean"]["mixer"]["window"] = MAX_WINDOW + 1
    with pytest.raises(SpecError, match=rf"layer_types\.mean\.mixer\.window: {MAX_WINDOW + 1} is wider than {MAX_WINDOW}"):
        load(too_wide)  # the block's own settings_problems, reported at the setting's full path
    misnamed = spec_dict()
    misnamed["model"]["text"]["layer_types"]["mean"]["mixer"]["block"] = "my_test_mixr"
    with pytest.raises(SpecError, match=rf"'my_test_mixr' is not one of gated_attention, gated_deltanet, {MIXER_NAME} "
                                        rf"— did you mean '{MIXER_NAME}'\?"):
        load(misnamed)


def test_the_registered_mixer_trains_through_the_real_loop(custom_mixer, tmp_path):
    spec = load(spec_dict(steps=STEPS, log_every=1, checkpoint={"every": STEPS},
                          schedule={"name": "constant", "warmup_steps": 0}))
    result = train(spec, output_dir=tmp_path / "run", stream=io.StringIO())
    losses = [result.losses[step] for step in sorted(result.losses)]
    assert len(losses) == STEPS and losses[-1] < losses[0], losses

    initial = build_model(spec, seed=spec.train["seed"])  # what the run started from
    trained = build_model(spec, seed=spec.train["seed"])
    load_model_weights(result.last_checkpoint, trained)
    [(path, before)] = window_means(initial)
    [(_, after)] = window_means(trained)
    assert path.endswith(".layers.1.window_mean")  # layer 1, under the block's hf_attribute
    for (name, start), end in zip(before.named_parameters(), after.parameters()):
        assert not torch.equal(start, end), f"{name} did not change in training"


def window_means(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, CausalWindowMean)]


def test_the_registered_mixer_counts_its_own_flops_and_one_without_the_method_warns_once(custom_mixer):
    text = load(spec_dict()).model["text"]
    seq = 256
    attention = 12 * 4 * 32 * seq  # the tiny spec's one gated-attention layer: 4 heads x 32 dims
    assert attention_flops_per_token(text, seq) == attention + 3 * 3 * 64  # window 3, hidden 64

    class Uncounted(CausalWindowMean):
        flops_per_token = None  # as a block class that does not define it

    unregister("mixer", MIXER_NAME)
    register("mixer", MIXER_NAME)(Uncounted)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert attention_flops_per_token(text, seq) == attention  # its parameters' 6·N only
            attention_flops_per_token(text, seq)
        assert [str(w.message) for w in caught] == [
            f"mixer block {MIXER_NAME!r} ({__name__}.{Uncounted.__qualname__}) has no flops_per_token: MFU counts only "
            "its parameters' 6·N; give it a staticmethod flops_per_token(settings, hidden_size, seq_len) -> float "
            "for the rest"]
    finally:
        unregister("mixer", MIXER_NAME)
        register("mixer", MIXER_NAME)(CausalWindowMean)  # for the fixture to unregister
