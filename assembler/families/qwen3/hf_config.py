"""Spec <-> HuggingFace Qwen3 `config.json` (transformers' `Qwen3ForCausalLM`, dense text models).

A Qwen3 text tower in spec terms: one layer type `full` whose mixer is `gated_attention` without
its output gate (per-head q/k RMSNorm, standard RoPE over the whole head), a SwiGLU MLP, and
plain (`default`) RMSNorms everywhere. Standard RoPE is the rotary embedding with every frequency
on the first position axis (`mrope_section: [head_dim / 2, 0, 0]`, not interleaved): text tokens
have equal positions on all three axes, so that is exactly 1-D RoPE.
"""

from __future__ import annotations

from typing import Any

from assembler.hf.config_reader import BOOKKEEPING_FIELDS, ConfigReader
from assembler.spec import Spec
from assembler.spec.errors import Problem, SpecError

ARCHITECTURE = "Qwen3ForCausalLM"
MODEL_TYPE = "qwen3"
LAYER_TYPE = "full"  # the spec's one layer type; HF calls it full_attention
HF_LAYER_TYPE = "full_attention"

# transformers' defaults (configuration_qwen3.py) for fields a config.json may omit;
# tests/test_qwen3_family.py checks them against the installed transformers.
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 32768, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
}
HF_ROPE_THETA = 10000.0
# Qwen3's chat end-of-turn token `<|im_end|>`: the eos of a config that names none. A text-only
# model reads no other special token (model.tokens' vision ids are ignored without a vision tower).
QWEN3_EOS = 151645
# Read but without effect on a model that never slides its window.
_WINDOW_FIELDS = {"sliding_window", "max_window_layers"}


def model_from_hf(config: dict, where: str | None) -> tuple[dict, list[Problem]]:
    """(the spec's `model` section, problems) of a Qwen3 config.json dict."""
    reader = ConfigReader(where, family_file="assembler/families/qwen3/hf_config.py", dense_models="dense Qwen3 models")
    reader.expect(config, "", "hidden_act", "silu", "the MLP is SwiGLU")
    reader.expect(config, "", "attention_bias", False, "attention projections have no bias")
    reader.expect(config, "", "attention_dropout", 0.0, "attention has no dropout")
    reader.expect(config, "", "use_sliding_window", False, "every layer attends to the whole document")
    architectures = config.get("architectures")
    if architectures not in (None, [ARCHITECTURE]):
        reader.refuse("architectures", f"{architectures!r} cannot be represented", f"only [{ARCHITECTURE!r}] is", architectures)
    rope = {**({"rope_theta": config["rope_theta"]} if "rope_theta" in config else {}),
            **(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    reader.expect(rope, "rope_parameters.", "rope_type", "default", "the attention uses plain RoPE")
    reader.unknown(rope, "rope_parameters.", {"rope_type", "rope_theta", "type"})
    reader.unknown(config, "", BOOKKEEPING_FIELDS | set(HF_DEFAULTS) | _WINDOW_FIELDS | {
        "model_type", "eos_token_id", "layer_types", "rope_parameters", "rope_scaling", "rope_theta"})
    get = lambda field: config.get(field, HF_DEFAULTS[field])  # noqa: E731
    num_hidden_layers = get("num_hidden_layers")
    for index, kind in enumerate(config.get("layer_types") or []):
        if kind != HF_LAYER_TYPE:
            reader.refuse(f"layer_types[{index}]", f"{kind!r} cannot be represented", f"only {HF_LAYER_TYPE!r} is", kind)
    eos = reader.eos_token_id(config, "")
    head_dim = get("head_dim")
    model = {
        "text": {
            "vocab_size": get("vocab_size"),
            "hidden_size": get("hidden_size"),
            "num_hidden_layers": num_hidden_layers,
            "layers": [LAYER_TYPE] * num_hidden_layers,
            "layer_types": {LAYER_TYPE: {
                "mixer": {"block": "gated_attention", "num_attention_heads": get("num_attention_heads"),
                          "num_key_value_heads": get("num_key_value_heads"), "head_dim": head_dim,
                          "qk_norm": True, "output_gate": False},
                "mlp": {"block": "swiglu", "intermediate_size": get("intermediate_size")},
            }},
            "norms": _NORMS,
            "rms_norm_eps": get("rms_norm_eps"),
            "rope": _rope(rope.get("rope_theta", HF_ROPE_THETA), head_dim),
            "max_position_embeddings": get("max_position_embeddings"),
            "tie_word_embeddings": get("tie_word_embeddings"),
            "initializer_range": get("initializer_range"),
        },
        "tokens": {"eos": QWEN3_EOS if eos is None else eos},
    }
    return model, reader.problems


def hf_config_from_spec(spec: Spec, dtype: str = "bfloat16") -> dict:
    """The config.json dict transformers' Qwen3ForCausalLM loads for `spec.model`."""
    mixer, mlp = _refuse_unrepresentable(spec)
    text = spec.settings.model.text
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "dtype": dtype,
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": mlp["intermediate_size"],
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": mixer["num_attention_heads"],
        "num_key_value_heads": mixer["num_key_value_heads"],
        "head_dim": mixer["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range,
        "rms_norm_eps": text.rms_norm_eps,
        "tie_word_embeddings": text.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": text.rope["rope_theta"]},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "layer_types": [HF_LAYER_TYPE] * text.num_hidden_layers,
        "eos_token_id": spec.settings.model.tokens.eos,
        "bos_token_id": None,
        "pad_token_id": None,
    }


_NORMS = {"layer": "default", "qk": "default", "final": "default", "deltanet_gate": "default"}


def _rope(theta: float, head_dim: int) -> dict:
    return {"rope_theta": theta, "partial_rotary_factor": 1.0, "mrope_section": [head_dim // 2, 0, 0], "mrope_interleaved": False}


def _refuse_unrepresentable(spec: Spec) -> tuple[dict, dict]:
    """(the attention mixer, the MLP) of a spec transformers' Qwen3ForCausalLM can load: one layer
    type, gated attention without the gate and with q/k norms, SwiGLU, default norms, plain RoPE,
    no vision tower; otherwise SpecError naming the fields."""
    text = spec.settings.model.text
    problems = []

    def refuse(path: str, value: Any, wanted: Any, why: str) -> None:
        problems.append(Problem(path, f"{value!r} has no HF Qwen3 equivalent", why, value, repr(wanted)))

    used = list(dict.fromkeys(text.layers))
    if len(used) != 1:
        refuse("model.text.layers", used, [used[0]], "transformers' Qwen3 has one kind of decoder layer")
    layer_type = text.layer_types[used[0]]
    mixer, mlp = layer_type["mixer"], layer_type["mlp"]
    for key, wanted in {"block": "gated_attention", "qk_norm": True, "output_gate": False}.items():
        if mixer.get(key) != wanted:
            refuse(f"model.text.layer_types.{used[0]}.mixer.{key}", mixer.get(key), wanted, "Qwen3 attention: q/k norms, no output gate")
    if mlp["block"] != "swiglu":
        refuse(f"model.text.layer_types.{used[0]}.mlp.block", mlp["block"], "swiglu", "Qwen3's MLP is SwiGLU")
    for key in ("layer", "qk", "final"):
        if text.norms[key] != "default":
            refuse(f"model.text.norms.{key}", text.norms[key], "default", "Qwen3's RMSNorms are x̂·w")
    wanted_rope = _rope(text.rope["rope_theta"], mixer.get("head_dim", 0))
    for key, wanted in wanted_rope.items():
        if text.rope[key] != wanted:
            refuse(f"model.text.rope.{key}", text.rope[key], wanted, "Qwen3 rotates the whole head with plain RoPE")
    if spec.settings.model.vision:
        refuse("model.vision", "a vision tower", None, "Qwen3ForCausalLM is a text-only model: remove model.vision")
    if problems:
        raise SpecError(problems).with_file(str(spec.source)) if spec.source else SpecError(problems)
    return mixer, mlp
