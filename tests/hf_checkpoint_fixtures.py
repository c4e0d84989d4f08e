"""Tiny HF Qwen3.5 folders made by transformers itself, for the HF checkpoint I/O tests.

The source folder is what a released checkpoint looks like at toy size: several safetensors shards
+ index, bf16 except the fp32 `A_log` / `linear_attn.norm.weight` (the released dtype policy),
tokenizer / processor files beside the weights. Weights are random and every norm weight is
non-zero, so a corrupted zero-centered norm would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3_5ForConditionalGeneration

from assembler.families.qwen3_5 import FAMILY as QWEN3_5
from assembler.hf.checkpoint.dtype_policy import export_dtype
from tests.oracle import randomize_parameters_, tiny_config

# Special tokens inside the toy vocabulary (256), so an image can be fed through the embedding.
TOKENS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
SOURCE_SHARD_SIZE = "60KB"  # the toy model is ~300 KB in bf16: several shards
SIDE_FILES = {
    "tokenizer_config.json": '{"model_max_length": 4096}\n',
    "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}\n",
    "preprocessor_config.json": '{"patch_size": 16}\n',
}
MTP_TENSORS = {  # shapes of the released head's kinds of tensors, at toy size
    "mtp.fc.weight": ((64, 128), torch.bfloat16),
    "mtp.norm.weight": ((64,), torch.bfloat16),
    "mtp.layers.0.self_attn.q_proj.weight": ((256, 64), torch.bfloat16),
    "mtp.pre_fc_norm_hidden.weight": ((64,), torch.float32),
}


EOS_TOKEN_ID = 254


def tiny_hf_config():
    return tiny_config(text={"eos_token_id": EOS_TOKEN_ID}, **TOKENS)


def make_reference_model(seed: int = 0) -> Qwen3_5ForConditionalGeneration:
    """A random toy Qwen3.5 in the released dtype policy (bf16, A_log and the gated norm fp32)."""
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(tiny_hf_config()).eval()
    randomize_parameters_(model, seed=seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.data = parameter.data.to(export_dtype(name, fp32_suffixes=QWEN3_5.fp32_export_suffixes))
    return model


def make_source_folder(path: Path, seed: int = 0) -> Path:
    """save_pretrained of make_reference_model into `path` (sharded), plus tokenizer/processor files."""
    make_reference_model(seed).save_pretrained(path, max_shard_size=SOURCE_SHARD_SIZE)
    for name, text in SIDE_FILES.items():
        (path / name).write_text(text)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3, "the toy source should have several shards"
    return path


def add_mtp_tensors(path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """Add `mtp.*` tensors in a shard of their own, as the released checkpoint stores its MTP head."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: torch.randn(shape, generator=generator).to(dtype) for name, (shape, dtype) in MTP_TENSORS.items()}
    save_file(tensors, str(path / "model-mtp.safetensors"), metadata={"format": "pt"})
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update(dict.fromkeys(tensors, "model-mtp.safetensors"))
    index_path.write_text(json.dumps(index, indent=2))
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["mtp_num_hidden_layers"] = 1
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return tensors


def sample_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """One row: text, then one 4 x 4-patch image (4 merged tokens) between vision markers, then text."""
    generator = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(0, 240, (n,), generator=generator)  # noqa: E731 - below the special ids
    image = torch.tensor([TOKENS["vision_start_token_id"]] + [TOKENS["image_token_id"]] * 4 + [TOKENS["vision_end_token_id"]])
    input_ids = torch.cat([text(7), image, text(9)])[None]
    grid = torch.tensor([[1, 4, 4]])
    pixel_values = torch.randn(16, 3 * 2 * 16 * 16, generator=generator)
    return dict(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid)


@torch.no_grad()
def transformers_logits(folder: Path) -> torch.Tensor:
    """Logits [1, T, V] of transformers' own model loaded from `folder` in fp32 (eager attention)."""
    model = Qwen3_5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    inputs = sample_inputs()
    mm_token_type_ids = (inputs["input_ids"] == TOKENS["image_token_id"]).int()  # what the processor returns
    return model(**inputs, mm_token_type_ids=mm_token_type_ids).logits


def make_tiny_release_folder(path: Path, seed: int = 0) -> Path:
    """What a released Qwen3.5 folder holds, at the tiny spec's size: save_pretrained of a random
    transformers model with the tiny spec's config (the real 248,320-token vocabulary and special
    token ids, so the shipped tiny data fits it) and the tokenizer / processor files beside it."""
    from transformers import Qwen3_5Config

    from assembler import load_spec
    from assembler.hf.checkpoint.serving_files import serving_files
    from assembler.hf.config import hf_config_from_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml")
    config = hf_config_from_spec(spec, "bfloat16")
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")}))
    model.to(torch.bfloat16).save_pretrained(path)
    for name, text in serving_files(spec).items():
        (path / name).write_text(text)
    return path
