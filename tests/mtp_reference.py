"""An independent Qwen3.5 multi-token-prediction head, written from the published architecture
(vLLM's and SGLang's Qwen3.5 MTP models) out of transformers' own Qwen3.5 modules, and the
released checkpoint's 15 `mtp.*` tensors made from it for a toy HF folder.

    x = fc(cat[pre_fc_norm_embedding(embed(token t+1)), pre_fc_norm_hidden(h_t)])   h_t: final-normed
    y = norm(layers.0(x))        a full-attention Qwen3_5DecoderLayer at token t's rope positions
    logits(t+2) = lm_head(y)

Nothing here imports the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5RMSNorm

# The released Qwen3.5 checkpoints' MTP tensors (mtp_num_hidden_layers 1): 15 names.
RELEASED_MTP_NAMES = sorted(
    ["mtp.fc.weight", "mtp.norm.weight", "mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight"]
    + [f"mtp.layers.0.{name}.weight" for name in (
        "input_layernorm", "post_attention_layernorm",
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )]
)


class ReferenceMtpHead(nn.Module):
    """The MTP head of a Qwen3_5TextConfig `config` (parameter names: the checkpoint's, without `mtp.`)."""

    def __init__(self, config) -> None:  # noqa: ANN001 (Qwen3_5TextConfig)
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.config = config
        self.pre_fc_norm_embedding = Qwen3_5RMSNorm(hidden, eps=eps)
        self.pre_fc_norm_hidden = Qwen3_5RMSNorm(hidden, eps=eps)
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        full_layer = config.layer_types.index("full_attention")
        self.layers = nn.ModuleList([Qwen3_5DecoderLayer(config, full_layer)])
        self.norm = Qwen3_5RMSNorm(hidden, eps=eps)

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor, position_embeddings, text_position_ids) -> torch.Tensor:  # noqa: ANN001
        """next_embeds [B, S, H] (embedding of token t+1), hidden [B, S, H] (h_t) -> [B, S, H]."""
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], dim=-1))
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=None, cache=None, position_ids=text_position_ids)
        for layer in self.layers:
            x = layer(x, position_embeddings=position_embeddings, attention_mask=mask, position_ids=text_position_ids)
        return self.norm(x)


def add_released_mtp_head(folder: Path, seed: int = 3, std: float = 0.1) -> dict[str, torch.Tensor]:
    """Write a random ReferenceMtpHead of `folder`'s text config as the released checkpoint stores
    its head: the 15 `mtp.*` tensors in bf16 in a shard of their own, `mtp_num_hidden_layers: 1` and
    `mtp_use_dedicated_embeddings: false` in config.json. Every norm weight is non-zero."""
    from transformers import Qwen3_5TextConfig

    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    text_config = Qwen3_5TextConfig(**config["text_config"])
    text_config._attn_implementation = "eager"
    head = ReferenceMtpHead(text_config)
    generator = torch.Generator().manual_seed(seed)
    tensors = {f"mtp.{name}": (torch.randn(p.shape, generator=generator) * std).to(torch.bfloat16).contiguous()
               for name, p in head.named_parameters()}
    assert sorted(tensors) == RELEASED_MTP_NAMES
    save_file(tensors, str(folder / "model-mtp.safetensors"), metadata={"format": "pt"})
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update(dict.fromkeys(tensors, "model-mtp.safetensors"))
    index_path.write_text(json.dumps(index, indent=2))
    config["text_config"].update(mtp_num_hidden_layers=1, mtp_use_dedicated_embeddings=False)
    config_path.write_text(json.dumps(config, indent=2))
    return tensors


def reference_head_from(tensors: dict[str, torch.Tensor], config, dtype: torch.dtype) -> ReferenceMtpHead:  # noqa: ANN001
    """A ReferenceMtpHead holding the checkpoint tensors `tensors` (`mtp.*`), in `dtype`."""
    head = ReferenceMtpHead(config)
    head.load_state_dict({name.removeprefix("mtp."): t for name, t in tensors.items()}, strict=True)
    return head.to(dtype)
