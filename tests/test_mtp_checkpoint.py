"""HF checkpoint I/O of the MTP head. With `model.mtp` the released head (15 `mtp.*` tensors) loads
into the model, is exported as the model holds it (trained values, not the source's) and loads
back equal; a folder without the head is refused. Without `model.mtp` the same folder's head is
carried through verbatim, as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from assembler.model.build import build_model
from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from assembler.hf.config import spec_from_hf_config
from assembler.spec.loading import load_spec_from_dict
from tests.hf_checkpoint_fixtures import make_source_folder, transformers_logits
from tests.mtp_reference import RELEASED_MTP_NAMES, add_released_mtp_head


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return make_source_folder(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict]:
    folder = make_source_folder(tmp_path_factory.mktemp("released"))
    return folder, add_released_mtp_head(folder)


def _spec_with_mtp(folder: Path):
    base = spec_from_hf_config(folder)
    return load_spec_from_dict({"name": "with_mtp", "model": {**base.model, "mtp": {"loss_weight": 0.3}}})


def _written(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = {}
    for name, file in index["weight_map"].items():
        with safe_open(str(folder / file), "pt") as f:
            tensors[name] = f.get_tensor(name)
    return tensors


def _mtp(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith("mtp.")}


def test_the_released_head_loads_trains_exports_and_loads_back(released, tmp_path, caplog):
    folder, source_tensors = released
    spec = _spec_with_mtp(folder)
    model = build_model(spec, device="meta")
    with caplog.at_level(logging.INFO):
        loaded = load_hf_checkpoint(model, folder, spec)
    assert loaded.extra_tensor_names == []  # nothing carried: the head is the model's own
    assert not [r for r in caplog.records if "carrying" in r.getMessage()]
    assert sorted(_mtp(model)) == RELEASED_MTP_NAMES
    for name, tensor in source_tensors.items():
        assert torch.equal(_mtp(model)[name], tensor.float()), name

    with torch.no_grad():  # what training does to the head, in short: new values
        generator = torch.Generator().manual_seed(7)
        for name, parameter in model.named_parameters():
            if name.startswith("mtp."):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
    trained = _mtp(model)

    out = save_hf_checkpoint(model, tmp_path / "out", spec, dtype=torch.float32)
    written = _written(out)
    assert sorted(n for n in written if n.startswith("mtp.")) == RELEASED_MTP_NAMES
    for name, tensor in trained.items():
        assert torch.equal(written[name], tensor), f"{name}: the export does not hold the trained value"
        assert not torch.equal(written[name], source_tensors[name].float()), name
    text_config = json.loads((out / "config.json").read_text())["text_config"]
    assert text_config["mtp_num_hidden_layers"] == 1 and text_config["mtp_use_dedicated_embeddings"] is False

    again = build_model(spec, device="meta")
    load_hf_checkpoint(again, out, spec)
    for name, tensor in trained.items():
        assert torch.equal(_mtp(again)[name], tensor), name

    bf16 = save_hf_checkpoint(model, tmp_path / "bf16", spec)  # the released dtype: bf16 like the rest
    for name, tensor in _written(bf16).items():
        if name.startswith("mtp."):
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, trained[name].to(torch.bfloat16)), name
    assert transformers_logits(bf16).isfinite().all()  # transformers loads it (it skips mtp.* itself)


def test_a_spec_with_mtp_refuses_a_folder_without_the_head(plain):
    spec = _spec_with_mtp(plain)
    with pytest.raises(CheckpointError) as error:
        load_hf_checkpoint(build_model(spec, device="meta"), plain, spec)
    message = str(error.value)
    assert "missing from the checkpoint (15)" in message and "mtp.fc.weight" in message
    assert "remove model.mtp" in message


def test_without_model_mtp_the_released_head_is_carried_verbatim(released, tmp_path):
    folder, source_tensors = released
    spec = spec_from_hf_config(folder)
    assert spec.model.get("mtp") is None
    model = build_model(spec, device="meta")
    loaded = load_hf_checkpoint(model, folder, spec)
    assert sorted(loaded.extra_tensor_names) == RELEASED_MTP_NAMES
    assert not [n for n, _ in model.named_parameters() if n.startswith("mtp.")]
    written = _written(save_hf_checkpoint(model, tmp_path / "out", spec))
    for name, tensor in source_tensors.items():
        assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name
