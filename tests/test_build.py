"""The assembler builds the model the spec describes, with HF Qwen3.5 parameter names and shapes."""

from pathlib import Path

import pytest
import torch

from assembler import build_model, load_spec
from assembler.model.summary import parameter_counts

ROOT = Path(__file__).resolve().parents[1]
# A copy of ../shared/reference/qwen3_5_4b_config.json, so CI needs nothing outside the clone.
REFERENCE_CONFIG = ROOT / "tests" / "reference" / "qwen3_5_4b_config.json"


@pytest.fixture(scope="module")
def flagship_on_meta():
    return build_model(load_spec(ROOT / "specs" / "qwen3_5_4b.yaml"), device="meta")


def _transformers_flagship_on_meta():
    transformers = pytest.importorskip("transformers")
    import json

    config_dict = json.loads(REFERENCE_CONFIG.read_text())
    config = transformers.Qwen3_5Config(**config_dict)
    with torch.device("meta"):
        return transformers.Qwen3_5ForConditionalGeneration(config)


def test_flagship_parameter_counts_match_the_card(flagship_on_meta):
    counts = parameter_counts(flagship_on_meta)
    assert counts.total == 4_539_265_536
    assert counts.text == 4_205_751_296
    assert counts.vision == 333_514_240


def test_meta_build_allocates_nothing(flagship_on_meta):
    assert all(p.device.type == "meta" for p in flagship_on_meta.parameters())


def test_names_and_shapes_equal_transformers(flagship_on_meta):
    if not REFERENCE_CONFIG.exists():
        pytest.fail(f"reference config missing: {REFERENCE_CONFIG}")
    reference = _transformers_flagship_on_meta()
    ours = {k: tuple(v.shape) for k, v in flagship_on_meta.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert ours == theirs


def test_tied_head_shares_the_embedding(flagship_on_meta):
    assert flagship_on_meta.lm_head.weight is flagship_on_meta.model.language_model.embed_tokens.weight


def test_layer_types_follow_the_spec(flagship_on_meta):
    layers = flagship_on_meta.model.language_model.layers
    kinds = ["full" if hasattr(layer, "self_attn") else "linear" for layer in layers]
    assert kinds == ["full" if i % 4 == 3 else "linear" for i in range(32)]
