"""Spec <-> HuggingFace Qwen3.5 `config.json` (Qwen3_5ForConditionalGeneration, dense).

`model_from_hf` reads a config.json dict (or transformers' `Qwen3_5Config.to_dict()`) into the
spec's model section; `hf_config_from_spec` writes the config.json transformers loads for a spec's
model. Any field that changes the architecture and has no spec equivalent (MoE, attention bias,
another activation, ...) is refused by name: importing must never silently build a different model.
"""

from __future__ import annotations

from typing import Any

from assembler.spec import Spec
from assembler.hf.config_reader import BOOKKEEPING_FIELDS, ConfigReader
from assembler.spec.errors import Problem, SpecError

ARCHITECTURE = "Qwen3_5ForConditionalGeneration"

# transformers' defaults (configuration_qwen3_5.py / modeling_qwen3_5.py) for fields a config.json
# may omit; tests/test_hf_config.py checks them against the installed transformers.
HF_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 248320, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
    "num_attention_heads": 16, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32768,
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "attention_bias": False, "attention_dropout": 0.0,
    "head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32,
}
HF_ROPE_DEFAULTS: dict[str, Any] = {"rope_theta": 10000.0, "partial_rotary_factor": 0.25, "mrope_section": [11, 11, 10]}
HF_VISION_DEFAULTS: dict[str, Any] = {
    "depth": 27, "hidden_size": 1152, "hidden_act": "gelu_pytorch_tanh", "intermediate_size": 4304, "num_heads": 16,
    "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 3584,
    "num_position_embeddings": 2304, "initializer_range": 0.02,
}
HF_VISION_ROPE_THETA = 10000.0
HF_TOKEN_DEFAULTS: dict[str, Any] = {
    "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053, "vision_end_token_id": 248054,
}

# Multi-token-prediction head and inference-engine hints: not part of the model transformers builds.
_TEXT_IGNORED = BOOKKEEPING_FIELDS | {"mtp_num_hidden_layers", "mtp_use_dedicated_embeddings", "mamba_ssm_dtype"}
# HF's layer type names, and the spec layer type (with its mixer block) each one becomes on import.
_LAYER_TYPES = {"linear_attention": "linear", "full_attention": "full"}
_HF_LAYER_TYPE_OF_MIXER = {"gated_deltanet": "linear_attention", "gated_attention": "full_attention"}


def model_from_hf(config: dict, where: str | None) -> tuple[dict, list[Problem]]:
    """(the spec's `model` section, problems) of a Qwen3.5 config.json dict (see ModelFamily)."""
    reader = _ConfigReader(where)
    model = reader.model(config)
    return model, reader.problems


def hf_config_from_spec(spec: Spec, dtype: str = "bfloat16") -> dict:
    """The config.json dict transformers' Qwen3_5ForConditionalGeneration loads for `spec.model`."""
    linear, full, mlp = _refuse_unrepresentable(spec)
    model = spec.settings.model
    text, vision, tokens = model.text, model.vision, model.tokens
    rope = text.rope
    mixer_of = {name: lt["mixer"]["block"] for name, lt in text.layer_types.items()}
    text_config = {
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": mlp["intermediate_size"],
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": full["num_attention_heads"],
        "num_key_value_heads": full["num_key_value_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": text.max_position_embeddings,
        "initializer_range": text.initializer_range,
        "rms_norm_eps": text.rms_norm_eps,
        "tie_word_embeddings": text.tie_word_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": rope["rope_theta"],
            "partial_rotary_factor": rope["partial_rotary_factor"],
            "mrope_section": list(rope["mrope_section"]),
            "mrope_interleaved": rope["mrope_interleaved"],
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "head_dim": full["head_dim"],
        "linear_conv_kernel_dim": linear["conv_kernel_dim"],
        "linear_key_head_dim": linear["key_head_dim"],
        "linear_value_head_dim": linear["value_head_dim"],
        "linear_num_key_heads": linear["num_key_heads"],
        "linear_num_value_heads": linear["num_value_heads"],
        "layer_types": [_HF_LAYER_TYPE_OF_MIXER[mixer_of[name]] for name in text.layers],
        "pad_token_id": None,
        "eos_token_id": tokens.eos,
        "model_type": "qwen3_5_text",
    }
    if model.mtp is not None:  # vLLM / SGLang read these to build the head from `mtp.*`
        text_config["mtp_num_hidden_layers"] = model.mtp.num_hidden_layers
        text_config["mtp_use_dedicated_embeddings"] = False  # it reads the model's own embedding
    vision_config = {
        "depth": vision["depth"],
        "hidden_size": vision["hidden_size"],
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": vision["intermediate_size"],
        "num_heads": vision["num_heads"],
        "in_channels": vision["in_channels"],
        "patch_size": vision["patch_size"],
        "spatial_merge_size": vision["spatial_merge_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "out_hidden_size": vision["merger"]["out_hidden_size"],
        "num_position_embeddings": vision["num_position_embeddings"],
        "initializer_range": vision["initializer_range"],
        "rope_parameters": {"rope_theta": vision["rope_theta"], "rope_type": "axial"},
        "model_type": "qwen3_5_vision",
    }
    return {
        "architectures": [ARCHITECTURE],
        "dtype": dtype,
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": tokens.image,
        "video_token_id": tokens.video,
        "vision_start_token_id": tokens.vision_start,
        "vision_end_token_id": tokens.vision_end,
        "tie_word_embeddings": text.tie_word_embeddings,
        "model_type": "qwen3_5",
    }


# What transformers' Qwen3.5 hard-codes; a spec that chooses otherwise has no HF config. Paths
# under a layer type's mixer are checked for each layer type with that mixer.
_QWEN3_5_FIXED: dict[tuple[str, ...], Any] = {
    ("text", "norms", "layer"): "zero_centered",
    ("text", "norms", "qk"): "zero_centered",
    ("text", "norms", "final"): "zero_centered",
    ("text", "norms", "deltanet_gate"): "default",
    ("text", "rope", "mrope_interleaved"): True,
    ("vision", "block"): "vision_tower",
    ("vision", "merger", "block"): "patch_merger",
}
_QWEN3_5_FIXED_MIXER: dict[str, dict[str, Any]] = {"gated_attention": {"qk_norm": True, "output_gate": True}}


def _refuse_unrepresentable(spec: Spec) -> tuple[dict, dict, dict]:
    """(the Gated DeltaNet mixer, the gated-attention mixer, the MLP) of a spec transformers'
    Qwen3.5 can load: at most one layer type per mixer block, both with the same SwiGLU MLP, and
    every setting transformers hard-codes as it does; otherwise SpecError naming the fields."""
    problems = []
    for path, fixed in _QWEN3_5_FIXED.items():
        value: Any = spec.model
        for key in path:
            value = value[key]
        if value != fixed:
            problems.append(Problem("model." + ".".join(path), f"{value!r} has no HF Qwen3.5 equivalent",
                                    f"transformers' Qwen3.5 always uses {fixed!r}", value, repr(fixed)))
    layer_types = spec.settings.model.text.layer_types
    by_mixer: dict[str, list[str]] = {}
    for name in dict.fromkeys(spec.settings.model.text.layers):  # the layer types in use, in order
        by_mixer.setdefault(layer_types[name]["mixer"]["block"], []).append(name)
    for block, names in by_mixer.items():
        if block not in _HF_LAYER_TYPE_OF_MIXER or len(names) > 1:
            problems.append(Problem(f"model.text.layer_types.{names[-1]}.mixer.block",
                                    f"layer types {names} all use {block!r}" if len(names) > 1 else f"{block!r} has no HF Qwen3.5 equivalent",
                                    "transformers' Qwen3.5 has one Gated DeltaNet and one gated-attention layer type",
                                    block, " or ".join(_HF_LAYER_TYPE_OF_MIXER)))
        for name in names:
            for key, fixed in _QWEN3_5_FIXED_MIXER.get(block, {}).items():
                value = layer_types[name]["mixer"][key]
                if value != fixed:
                    problems.append(Problem(f"model.text.layer_types.{name}.mixer.{key}", f"{value!r} has no HF Qwen3.5 equivalent",
                                            f"transformers' Qwen3.5 always uses {fixed!r}", value, repr(fixed)))
    mlps = {name: layer_types[name]["mlp"] for names in by_mixer.values() for name in names}
    distinct = {tuple(sorted(m.items())) for m in mlps.values()}
    if len(distinct) > 1 or any(m["block"] != "swiglu" for m in mlps.values()):
        problems.append(Problem("model.text.layer_types", f"the layer types' MLPs differ or are not SwiGLU: {mlps}",
                                "transformers' Qwen3.5 has one SwiGLU MLP for every layer", mlps, "one swiglu mlp"))
    mtp = spec.settings.model.mtp
    if mtp is not None and by_mixer.get("gated_attention") != [mtp.layer_type]:
        problems.append(Problem("model.mtp.layer_type", f"{mtp.layer_type!r} is not the tower's gated-attention layer type",
                                "the released Qwen3.5 MTP layer is the text tower's full-attention layer",
                                mtp.layer_type, " or ".join(by_mixer.get("gated_attention", [])) or "a gated_attention layer type"))
    if problems:
        raise SpecError(problems).with_file(str(spec.source)) if spec.source else SpecError(problems)
    mixers = {block: layer_types[names[0]]["mixer"] for block, names in by_mixer.items()}
    # A tower without one of the two layer types still writes HF's fields for it: transformers'
    # defaults, which build nothing.
    no_linear = {"num_key_heads": HF_TEXT_DEFAULTS["linear_num_key_heads"], "num_value_heads": HF_TEXT_DEFAULTS["linear_num_value_heads"],
                 "key_head_dim": HF_TEXT_DEFAULTS["linear_key_head_dim"], "value_head_dim": HF_TEXT_DEFAULTS["linear_value_head_dim"],
                 "conv_kernel_dim": HF_TEXT_DEFAULTS["linear_conv_kernel_dim"]}
    no_full = {"num_attention_heads": HF_TEXT_DEFAULTS["num_attention_heads"], "num_key_value_heads": HF_TEXT_DEFAULTS["num_key_value_heads"],
               "head_dim": HF_TEXT_DEFAULTS["head_dim"]}
    return mixers.get("gated_deltanet", no_linear), mixers.get("gated_attention", no_full), next(iter(mlps.values()))


class _ConfigReader(ConfigReader):
    """Reads a Qwen3.5 config into a spec `model` section, collecting every refusal as a problem."""

    def __init__(self, where: str | None):
        super().__init__(where, family_file="assembler/families/qwen3_5/hf_config.py", dense_models="dense Qwen3.5 models")

    def model(self, config: dict) -> dict:
        model_type = config.get("model_type", "qwen3_5")
        if model_type != "qwen3_5":
            hint = "mixture-of-experts models are not supported" if "moe" in str(model_type) else "only qwen3_5 configs are supported"
            self.refuse("model_type", f"{model_type!r} cannot be represented", hint, model_type)
        architectures = config.get("architectures")
        if architectures not in (None, [ARCHITECTURE]):
            self.refuse("architectures", f"{architectures!r} cannot be represented", f"only [{ARCHITECTURE!r}] is", architectures)
        text, vision = config.get("text_config"), config.get("vision_config")
        for field, section in (("text_config", text), ("vision_config", vision)):
            if not isinstance(section, dict):
                self.refuse(field, "missing" if section is None else f"{section!r} is not an object",
                            f"a {ARCHITECTURE} config.json has text_config and vision_config")
        self.unknown(config, "", BOOKKEEPING_FIELDS | set(HF_TOKEN_DEFAULTS) | {
            "model_type", "architectures", "text_config", "vision_config", "tie_word_embeddings"})
        if self.problems:
            return {}
        tie = config.get("tie_word_embeddings", False)
        if "tie_word_embeddings" in text and text["tie_word_embeddings"] != tie:
            self.refuse("text_config.tie_word_embeddings", f"{text['tie_word_embeddings']!r} disagrees with the top-level "
                        f"tie_word_embeddings {tie!r}", "transformers ties by the top-level value: make them equal")
        tokens = {spec_key: config.get(f"{spec_key}_token_id", HF_TOKEN_DEFAULTS[f"{spec_key}_token_id"])
                  for spec_key in ("image", "video", "vision_start", "vision_end")}
        eos = self.eos_token_id(text, "text_config.")
        if eos is not None:
            tokens["eos"] = eos
        return {"text": self.text(text, tie), "vision": self.vision(vision), "tokens": tokens}

    def text(self, text: dict, tie: bool) -> dict:
        prefix = "text_config."
        self.expect(text, prefix, "model_type", "qwen3_5_text", "a dense Qwen3.5 text tower")
        self.expect(text, prefix, "hidden_act", "silu", "the MLP is SwiGLU")
        self.expect(text, prefix, "attention_bias", False, "attention projections have no bias")
        self.expect(text, prefix, "attention_dropout", 0.0, "attention has no dropout")
        self.expect(text, prefix, "attn_output_gate", True, "Qwen3.5 attention is gated")
        self.unknown(text, prefix, _TEXT_IGNORED | set(HF_TEXT_DEFAULTS) | {
            "model_type", "tie_word_embeddings", "eos_token_id", "layer_types", "full_attention_interval",
            "attn_output_gate", "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"})
        get = lambda field: text.get(field, HF_TEXT_DEFAULTS[field])  # noqa: E731
        num_hidden_layers = get("num_hidden_layers")
        layers = self.layer_types(text, num_hidden_layers)
        return {
            "vocab_size": get("vocab_size"),
            "hidden_size": get("hidden_size"),
            "num_hidden_layers": num_hidden_layers,
            "layers": layers,
            "layer_types": self.layer_type_sections(text, get, layers),
            "norms": {"layer": "zero_centered", "qk": "zero_centered", "final": "zero_centered", "deltanet_gate": "default"},
            "rms_norm_eps": get("rms_norm_eps"),
            "rope": self.rope(text),
            "max_position_embeddings": get("max_position_embeddings"),
            "tie_word_embeddings": tie,
            "initializer_range": get("initializer_range"),
        }

    def layer_type_sections(self, text: dict, get: Any, layers: list[str]) -> dict:
        """The spec's `layer_types` for the HF layer types `layers` uses (both, in the usual case)."""
        mlp = {"block": "swiglu", "intermediate_size": get("intermediate_size")}
        sections = {
            "linear": {"mixer": {
                "block": "gated_deltanet",
                "num_key_heads": get("linear_num_key_heads"),
                "num_value_heads": get("linear_num_value_heads"),
                "key_head_dim": get("linear_key_head_dim"),
                "value_head_dim": get("linear_value_head_dim"),
                "conv_kernel_dim": get("linear_conv_kernel_dim"),
            }, "mlp": dict(mlp)},
            "full": {"mixer": {
                "block": "gated_attention",
                "num_attention_heads": get("num_attention_heads"),
                "num_key_value_heads": get("num_key_value_heads"),
                "head_dim": get("head_dim"),
                "qk_norm": True,
                "output_gate": True,
            }, "mlp": dict(mlp)},
        }
        return {name: section for name, section in sections.items() if name in layers}

    def layer_types(self, text: dict, num_hidden_layers: int) -> list[str]:
        if "layer_types" not in text:
            interval = text.get("full_attention_interval", 4)
            if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
                self.refuse("text_config.full_attention_interval", f"{interval!r} is not a layer interval",
                            "expected a whole number >= 1 (every N-th layer is full attention), or give layer_types", interval)
                return ["linear"] * num_hidden_layers
            return ["full" if (i + 1) % interval == 0 else "linear" for i in range(num_hidden_layers)]
        layers = []
        for index, kind in enumerate(text["layer_types"]):
            if kind not in _LAYER_TYPES:
                self.refuse(f"text_config.layer_types[{index}]", f"{kind!r} cannot be represented",
                            f"only {', '.join(_LAYER_TYPES)} are", kind)
            layers.append(_LAYER_TYPES.get(kind, kind))
        return layers

    def rope(self, text: dict) -> dict:
        # transformers 5 keeps rope settings in rope_parameters; older configs spread them over
        # rope_scaling and top-level rope_theta / partial_rotary_factor.
        rope = {**{k: text[k] for k in ("rope_theta", "partial_rotary_factor") if k in text},
                **(text.get("rope_scaling") or {}), **(text.get("rope_parameters") or {})}
        prefix = "text_config.rope_parameters."
        self.expect(rope, prefix, "rope_type", "default", "the text tower uses plain (m)RoPE")
        self.expect(rope, prefix, "mrope_interleaved", True, "transformers' Qwen3.5 always interleaves mRoPE sections")
        self.unknown(rope, prefix, {"rope_type", "rope_theta", "partial_rotary_factor", "mrope_section", "mrope_interleaved", "type"})
        get = lambda field: rope.get(field, HF_ROPE_DEFAULTS[field])  # noqa: E731
        return {"rope_theta": get("rope_theta"), "partial_rotary_factor": get("partial_rotary_factor"),
                "mrope_section": list(get("mrope_section")), "mrope_interleaved": True}

    def vision(self, vision: dict) -> dict:
        prefix = "vision_config."
        # Old checkpoints wrote the parent's model_type here; transformers accepts both.
        if vision.get("model_type", "qwen3_5_vision") not in ("qwen3_5_vision", "qwen3_5"):
            self.expect(vision, prefix, "model_type", "qwen3_5_vision", "a Qwen3.5 vision tower")
        self.expect(vision, prefix, "hidden_act", "gelu_pytorch_tanh", "the vision MLP uses tanh-GELU")
        if vision.get("deepstack_visual_indexes"):
            self.refuse(f"{prefix}deepstack_visual_indexes", "deepstack features cannot be represented",
                        "Qwen3.5 has none: it must be empty", vision["deepstack_visual_indexes"])
        self.unknown(vision, prefix, BOOKKEEPING_FIELDS | set(HF_VISION_DEFAULTS) | {
            "model_type", "rope_parameters", "deepstack_visual_indexes"})
        rope = vision.get("rope_parameters") or {}
        self.expect(rope, f"{prefix}rope_parameters.", "rope_type", "axial", "the vision tower uses 2D axial RoPE")
        self.unknown(rope, f"{prefix}rope_parameters.", {"rope_type", "rope_theta"})
        get = lambda field: vision.get(field, HF_VISION_DEFAULTS[field])  # noqa: E731
        return {
            "block": "vision_tower",
            "depth": get("depth"),
            "hidden_size": get("hidden_size"),
            "num_heads": get("num_heads"),
            "intermediate_size": get("intermediate_size"),
            "in_channels": get("in_channels"),
            "patch_size": get("patch_size"),
            "temporal_patch_size": get("temporal_patch_size"),
            "spatial_merge_size": get("spatial_merge_size"),
            "num_position_embeddings": get("num_position_embeddings"),
            "rope_theta": rope.get("rope_theta", HF_VISION_ROPE_THETA),
            "initializer_range": get("initializer_range"),
            "merger": {"block": "patch_merger", "out_hidden_size": get("out_hidden_size")},
        }
