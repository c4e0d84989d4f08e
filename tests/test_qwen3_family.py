"""The second model family, Qwen3 dense text models, against transformers' Qwen3ForCausalLM.

The oracle is a tiny random Qwen3 as a user gets it: made by transformers, written by
save_pretrained, loaded by from_pretrained(dtype=..., attn_implementation="eager") (which keeps
the rotary inverse frequencies in fp32 under bf16). Our model comes from the same folder through
the user's path: `assemble import-hf` writes the spec, `build_model` + `load_hf_checkpoint` load
the weights. Logits, loss and every gradient must be torch.equal (fp32 and bf16, `hf` ops); the
export must load in transformers with identical logits; the shipped tiny spec must train.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import Qwen3Config, Qwen3ForCausalLM

from assembler import build_model, load_spec, spec_from_hf_config
from assembler.families.qwen3 import hf_config as qwen3_hf
from assembler.hf.checkpoint import load_hf_checkpoint, save_hf_checkpoint
from assembler.spec.errors import SpecError
from blocks.packing import PackingContext
from cli import assemble
from tests.oracle import randomize_parameters_

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_tiny.yaml"
VOCAB = 300
TOY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6, eos_token_id=299)


def _reference_folder(folder: Path, *, tie: bool) -> Path:
    config = Qwen3Config(**TOY, tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(0)
    randomize_parameters_(Qwen3ForCausalLM(config), seed=1, std=0.05).save_pretrained(folder)
    return folder


def _reference(folder: Path, dtype: torch.dtype) -> Qwen3ForCausalLM:
    return Qwen3ForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")


def _imported_spec(folder: Path, tmp_path: Path):
    """The spec `assemble import-hf FOLDER -o SPEC` writes, loaded with the hf backend."""
    spec_path = tmp_path / "imported.yaml"
    result = CliRunner().invoke(assemble, ["import-hf", str(folder), "-o", str(spec_path)])
    assert result.exit_code == 0, result.output
    return load_spec(spec_path, ["ops.backend=hf"])


def _ours(folder: Path, tmp_path: Path, dtype: torch.dtype):
    spec = _imported_spec(folder, tmp_path)
    model = build_model(spec, device="meta").to(dtype)
    load_hf_checkpoint(model, folder, spec)
    if spec.model["text"]["tie_word_embeddings"]:
        model.tie_weights()
    return spec, model


def _inputs():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (2, 21), generator=generator)
    labels = input_ids.clone()
    labels[0, :4] = -100
    return input_ids, labels


def test_hf_defaults_table_matches_transformers():
    config = Qwen3Config()
    assert {k: getattr(config, k) for k in qwen3_hf.HF_DEFAULTS} == qwen3_hf.HF_DEFAULTS
    assert config.rope_parameters["rope_theta"] == qwen3_hf.HF_ROPE_THETA


def test_import_writes_a_qwen3_spec(tmp_path):
    spec = _imported_spec(_reference_folder(tmp_path / "ref", tie=False), tmp_path)
    text = spec.model["text"]
    assert spec.model["family"] == "qwen3" and "vision" not in spec.model
    assert text["layers"] == ["full"] * 3
    mixer = text["layer_types"]["full"]["mixer"]
    assert (mixer["block"], mixer["num_attention_heads"], mixer["num_key_value_heads"], mixer["head_dim"]) == ("gated_attention", 4, 2, 16)
    assert mixer["output_gate"] is False and mixer["qk_norm"] is True
    assert text["rope"]["rope_theta"] == 1e6 and text["rope"]["mrope_section"] == [8, 0, 0]
    assert spec.model["tokens"]["eos"] == 299


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_loss_and_every_gradient_are_bitwise(tmp_path, dtype, tie):
    folder = _reference_folder(tmp_path / "ref", tie=tie)
    reference = _reference(folder, dtype)
    _, ours = _ours(folder, tmp_path, dtype)
    input_ids, labels = _inputs()

    expected = reference(input_ids=input_ids, labels=labels)
    actual = ours(input_ids, labels=labels, return_logits=True)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.loss, expected.loss)

    expected.loss.backward()
    actual.loss.backward()
    theirs = dict(reference.named_parameters())
    mine = dict(ours.named_parameters())
    assert sorted(mine) == sorted(theirs)
    differing = [name for name in theirs if not torch.equal(mine[name].grad, theirs[name].grad)]
    assert differing == []


def test_export_loads_in_transformers_with_identical_logits(tmp_path):
    folder = _reference_folder(tmp_path / "ref", tie=False)
    spec, ours = _ours(folder, tmp_path, torch.float32)
    out = save_hf_checkpoint(ours, tmp_path / "export", spec, source_dir=None, dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    exported = _reference(out, torch.float32)
    input_ids, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(exported(input_ids=input_ids).logits, ours(input_ids).logits)


def test_a_spec_transformers_qwen3_cannot_express_is_refused_by_field(tmp_path):
    spec = load_spec(TINY, ["model.text.layer_types.full.mixer.output_gate=true", "model.text.norms.final=zero_centered"])
    with pytest.raises(SpecError) as caught:
        qwen3_hf.hf_config_from_spec(spec)
    message = str(caught.value)
    assert "model.text.layer_types.full.mixer.output_gate" in message and "model.text.norms.final" in message


def test_a_config_with_sliding_windows_is_refused(tmp_path):
    config = Qwen3Config(**TOY, use_sliding_window=True, sliding_window=64).to_dict()
    with pytest.raises(SpecError, match="use_sliding_window"):
        spec_from_hf_config(config)


def test_the_tiny_qwen3_spec_trains_and_its_export_loads_in_transformers(tmp_path):
    run = tmp_path / "run"
    args = ["train", str(TINY), "-o", "train.steps=12", "-o", "train.log_every=1", "-o", "train.checkpoint.every=100",
            "--output-dir", str(run)]
    result = CliRunner().invoke(assemble, args)
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0, losses
    exported = Qwen3ForCausalLM.from_pretrained(run / "hf", dtype=torch.float32, attn_implementation="eager")
    spec = load_spec(TINY, ["ops.backend=hf"])
    ours = build_model(spec, device="meta")
    load_hf_checkpoint(ours, run / "hf", spec)
    ours.tie_weights()
    input_ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # The export is bf16 (the released dtype policy); both sides read the same bf16 weights
        # into fp32 parameters, so the logits must agree exactly.
        assert torch.equal(exported(input_ids=input_ids).logits, ours(input_ids).logits)


def test_a_packed_row_gives_each_document_transformers_logits_run_alone(tmp_path):
    # Two documents in one row (positions restart at the second): each document's logits are
    # transformers' on that document alone. Relative tolerance 1e-6 (fp32): the row's matmuls see
    # a longer M dimension than a document's, which may change their blocking (so not bitwise);
    # any leak across the boundary or a wrong position would be orders of magnitude larger.
    # Observed bitwise equal on the 2-core CI machine.
    folder = _reference_folder(tmp_path / "ref", tie=False)
    reference = _reference(folder, torch.float32)
    _, ours = _ours(folder, tmp_path, torch.float32)
    lengths = [13, 8]
    input_ids = torch.randint(0, VOCAB, (1, sum(lengths)), generator=torch.Generator().manual_seed(3))
    packing = PackingContext.from_document_lengths([lengths])
    with torch.no_grad():
        packed = ours(input_ids, packing=packing).logits
        start = 0
        for length in lengths:
            alone = reference(input_ids=input_ids[:, start:start + length]).logits
            torch.testing.assert_close(packed[:, start:start + length], alone, rtol=1e-6, atol=0)
            start += length


def test_the_build_summary_lists_the_text_model_without_a_vision_line():
    result = CliRunner().invoke(assemble, ["build", str(TINY), "--summary"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[1] for line in lines[2:7]] == ["model.embed_tokens", "model.layers.0", "model.layers.1",
                                                         "model.norm", "lm_head"]
    assert not any("vision" in line for line in lines)
    text = next(line for line in lines if line.startswith("text tower:"))
    total = next(line for line in lines if line.startswith("total:"))
    assert text.split()[-1] == total.split()[-1]


def test_a_text_only_model_has_no_vision_compile_policy_and_refuses_one():
    assert list(load_spec(TINY).parallel["compile"]) == ["full"]  # the resolved spec names only its block types
    with pytest.raises(SpecError, match=r"parallel\.compile\.vision: this model has no vision tower .* remove parallel\.compile\.vision"):
        load_spec(TINY, ["parallel.compile.vision={enabled: true}"])
