"""Validate a spec: JSON Schema first (every error, in words), then the checks a schema cannot express.

Semantic checks run only on a spec the schema accepts, so they may trust types and presence.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable

import jsonschema
from jsonschema import Draft202012Validator

from assembler.common.paths import unusable_path_reason
from assembler.spec.errors import Problem, SpecError, did_you_mean, format_path
from assembler.spec.schema import cached_schema, child_schema, resolve_ref
from blocks.constants import VISION_TOKEN_KEYS

VISION_BLOCK_TYPE = "vision"  # the block type of the vision tower's blocks in compile / checkpointing policies


def block_type_names(model: dict) -> list[str]:
    """The block types compile and checkpointing policies name: the text layer types, then `vision`
    for a model with a vision tower."""
    return [*model["text"]["layer_types"], *([VISION_BLOCK_TYPE] if model.get("vision") is not None else [])]


def block_fields(spec: dict) -> dict[tuple[str, ...], str]:
    """Where `spec` names a registered block, and the registry kind it is looked up under. Kinds
    the spec never names (e.g. `norm`) are chosen by the blocks themselves."""
    fields: dict[tuple[str, ...], str] = {}
    for name in spec["model"]["text"]["layer_types"]:
        fields[("model", "text", "layer_types", name, "mixer", "block")] = "mixer"
        fields[("model", "text", "layer_types", name, "mlp", "block")] = "mlp"
    if spec["model"].get("vision"):
        fields[("model", "vision", "block")] = "vision"
        fields[("model", "vision", "merger", "block")] = "merger"
    return fields


# YAML's 1.0 is a number; 1 is an integer; JSON Schema would also call 1.0 an integer, which would
# hand a float to nn.Linear. Booleans are never numbers.
_TYPE_CHECKER = Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
)
_SpecValidator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPE_CHECKER)

# `format: path` marks the settings that name a file or folder. What the OS would refuse in one (a
# NUL byte, a name or path past its length limits) is refused here, at the setting, not by the
# first open() in the middle of a run.
_FORMAT_CHECKER = jsonschema.FormatChecker(formats=())


@_FORMAT_CHECKER.checks("path", raises=ValueError)
def _is_usable_path(value: Any) -> bool:
    reason = unusable_path_reason(value) if isinstance(value, str) else None  # a wrong type is the schema's to report
    if reason:
        raise ValueError(reason)
    return True


# Spec keys renamed to transformers' config names (so spec <-> config.json is a rule, not a
# table): an old spec's key gets the new name as its hint.
RENAMED_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
                "conv_kernel_size": "conv_kernel_dim", "theta": "rope_theta"}


def _renamed_hint(key: str, allowed: list[str]) -> str | None:
    new = RENAMED_KEYS.get(key)
    return f"renamed to `{new}` (transformers' name for it)" if new in allowed else None


def validate_spec_dict(spec: dict, file: str | None = None) -> None:
    """Raise SpecError listing every problem of `spec` (defaults already filled in), or return."""
    problems = schema_problems(spec)
    if problems:  # the rest assume a schema-valid spec; the layer names are checked anyway
        problems += list(_check_layer_types_named(spec))
    else:
        problems = semantic_problems(spec)
    if problems:
        # A block section's settings are checked by the section's schema and again by its block
        # branch (allOf if/then): say each problem once.
        error = SpecError(list({(p.path, p.message, p.hint): p for p in problems}.values()))
        raise error.with_file(file) if file else error


def schema_problems(spec: Any) -> list[Problem]:
    """Every JSON Schema violation of `spec`, as readable problems (document order)."""
    validator = _SpecValidator(cached_schema(), format_checker=_FORMAT_CHECKER)
    problems: list[Problem] = []
    for error in validator.iter_errors(spec):
        problems.extend(_problems_from(error))
    return problems


def semantic_problems(spec: dict) -> list[Problem]:
    """The cross-field rules of a schema-valid spec (one with finite numbers: the rules compute with them)."""
    problems = list(_check_finite_numbers(spec))
    if problems:
        return problems
    for check in _SEMANTIC_CHECKS:
        problems.extend(check(spec))
    return problems


# ---------------------------------------------------------------------------------------------
# JSON Schema errors -> problems


def _problems_from(error: jsonschema.ValidationError) -> list[Problem]:
    path = list(error.absolute_path)
    value, kind = error.instance, error.validator
    schema = resolve_ref(error.schema)
    if kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        return [
            Problem(
                format_path(path + [key]),
                "unknown key",
                _renamed_hint(key, allowed) or did_you_mean(key, allowed) or f"allowed keys here: {', '.join(allowed)}",
                value=key,
                expected=", ".join(allowed),
            )
            for key in value
            if key not in allowed
        ]
    if kind == "required":
        problems = []
        for key in error.validator_value:
            if isinstance(value, dict) and key not in value:
                own = resolve_ref(schema.get("properties", {}).get(key, {}))  # a block's settings live in its own schema
                description = own.get("description") or (_schema_at(path + [key]) or {}).get("description", "")
                hint = f"add `{key}:` ({description})" if description else f"add `{key}:`"
                problems.append(Problem(format_path(path + [key]), "required key is missing", hint, expected=description))
        return problems
    expected = _describe(schema)
    if kind == "type" and "propertyNames" in error.relative_schema_path:  # a YAML key such as `5:` or `true:`
        return [Problem(format_path(path), f"the key {_show(value)} is {_kind_of(value)}, expected a name",
                        schema.get("description", ""), value, "a name")]
    if kind == "enum":
        options = error.validator_value
        return [Problem(format_path(path), f"{_show(value)} is not one of {', '.join(map(str, options))}",
                        did_you_mean(value, [o for o in options if isinstance(o, str)]), value, expected)]
    if kind == "type":
        return [Problem(format_path(path), f"{_show(value)} is {_kind_of(value)}, expected {_type_words(error.validator_value)}",
                        _type_hint(value, error.validator_value), value, expected)]
    if kind in ("anyOf", "oneOf"):
        branches = [resolve_ref(b) for b in error.validator_value]
        names = [o for b in branches for o in b.get("enum", []) if isinstance(o, str)]
        described = " or ".join(_describe(b) for b in branches)
        return [Problem(format_path(path), f"{_show(value)} is not {described}", did_you_mean(value, names), value, described)]
    bounds = {
        "minimum": "is below the minimum {}",
        "exclusiveMinimum": "must be greater than {}",
        "maximum": "is above the maximum {}",
        "exclusiveMaximum": "must be less than {}",
    }
    if kind in bounds:
        return [Problem(format_path(path), f"{_show(value)} " + bounds[kind].format(error.validator_value), "", value, expected)]
    if kind in ("minItems", "maxItems"):
        low, high = schema.get("minItems"), schema.get("maxItems")
        wanted = f"exactly {low}" if low == high else (f"at least {low}" if kind == "minItems" else f"at most {high}")
        return [Problem(format_path(path), f"{_show(value)} has {len(value)} items, expected {wanted}", "", value, expected)]
    if kind == "pattern":
        return [Problem(format_path(path), f"{_show(value)} does not match {error.validator_value}",
                        schema.get("description", ""), value, expected)]
    if kind == "not":  # a reserved value (a name the schema keeps for something else)
        return [Problem(format_path(path), f"{_show(value)} is not allowed here", schema.get("description", ""), value, expected)]
    if kind == "format":
        shown = _show(value) if len(str(value)) <= 80 else _show(str(value)[:77] + "...")
        return [Problem(format_path(path), f"{shown} is not a usable {error.validator_value}: {error.cause}",
                        "", value, expected)]
    if kind == "minLength":
        return [Problem(format_path(path), "must not be empty", schema.get("description", ""), value, expected)]
    return [Problem(format_path(path), error.message, "", value, expected)]


def _schema_at(path: list[str | int]) -> dict | None:
    node: dict | None = cached_schema()
    for key in path:
        if node is None:
            return None
        node = child_schema(node, key)
    return node


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    for python_type, words in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                               (str, "a string"), (list, "a list"), (dict, "a mapping")):
        if isinstance(value, python_type):
            return words
    return type(value).__name__


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def _type_words(types: str | list[str]) -> str:
    return " or ".join(_TYPE_WORDS.get(t, t) for t in ([types] if isinstance(types, str) else types))


def _describe(schema: dict) -> str:
    """What a schema accepts, in words: `one of linear, full`, `an integer >= 0`."""
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    words = _type_words(schema["type"]) if "type" in schema else "a valid value"
    for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in schema:
            words += f" {symbol} {schema[key]}"
    return words


def _type_hint(value: Any, types: str | list[str]) -> str:
    wanted = [types] if isinstance(types, str) else types
    if isinstance(value, str) and ("number" in wanted or "integer" in wanted):
        try:
            float(value)
        except ValueError:
            return ""
        mantissa, _, exponent = value.partition("e") if "e" in value else value.partition("E")
        sign = "" if exponent[:1] in ("+", "-") else "+"
        if exponent and ("." not in mantissa or sign):
            return (f"write {mantissa if '.' in mantissa else mantissa + '.0'}e{sign}{exponent}: YAML reads a number "
                    "with an exponent as a string unless it has a '.' and a signed exponent")
        return "write it without quotes"
    if isinstance(value, float) and value.is_integer() and "integer" in wanted:
        return f"write {int(value)} (no decimal point)"
    if isinstance(value, str) and "boolean" in wanted and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return "write true or false without quotes"
    return ""


# ---------------------------------------------------------------------------------------------
# Semantic checks (schema-valid spec, defaults filled)


def _check_layer_count(spec: dict) -> Iterable[Problem]:
    text = spec["model"]["text"]
    count, layers = text["num_hidden_layers"], text["layers"]
    if len(layers) != count:
        yield Problem("model.text.layers", f"has {len(layers)} entries but num_hidden_layers is {count}",
                      f"list one layer type per layer, or set num_hidden_layers: {len(layers)}", layers, f"{count} entries")


def _check_layer_types_named(spec: Any) -> Iterable[Problem]:
    """Every entry of `layers` names a declared layer type. Written for any input (it runs even
    when the schema found problems, as the schema's enum of layer names once did)."""
    text = spec.get("model", {}).get("text") if isinstance(spec, dict) and isinstance(spec.get("model"), dict) else None
    if not isinstance(text, dict) or not isinstance(text.get("layer_types"), dict) or not isinstance(text.get("layers"), list):
        return
    declared = [str(name) for name in text["layer_types"]]  # a non-string key is the schema's to report
    for index, name in enumerate(text["layers"]):
        if isinstance(name, str) and name not in declared:
            yield Problem(f"model.text.layers[{index}]", f"{name!r} is not a layer type of model.text.layer_types",
                          did_you_mean(name, declared) or f"declared layer types: {', '.join(declared)}", name,
                          f"one of {declared}")


def _check_block_settings(spec: dict) -> Iterable[Problem]:
    """What each block the spec names says about its own settings (`settings_problems`: relations
    between them, such as heads that must divide evenly), at the setting's full path."""
    from blocks.registry import UnknownBlockError, get_block

    for path, kind in block_fields(spec).items():
        section: Any = spec
        for key in path[:-1]:  # the section holding `block`
            section = section[key]
        try:
            cls = get_block(kind, section["block"])
        except UnknownBlockError:
            continue  # reported by _check_registered_blocks
        for problem in getattr(cls, "settings_problems", lambda settings: ())(section):
            yield Problem(format_path((*path[:-1], problem.key)), problem.message, problem.hint, problem.value, problem.expected)


def _check_mrope_sections(spec: dict) -> Iterable[Problem]:
    """The text tower has one rotary embedding: every mixer that reads it (one with a `head_dim`,
    as assembler/model/towers.py sizes it) shares its head_dim."""
    text = spec["model"]["text"]
    attention = {name: lt["mixer"] for name, lt in text["layer_types"].items() if "head_dim" in lt["mixer"]}
    head_dims = sorted({mixer["head_dim"] for mixer in attention.values()})
    if len(head_dims) > 1:
        yield Problem("model.text.layer_types", f"the attention layer types have head_dim {head_dims}",
                      "the text tower's one rotary embedding needs one head_dim: give every attention mixer the same",
                      head_dims, "one head_dim")
        return
    if not head_dims:
        return
    head_dim, factor = head_dims[0], text["rope"]["partial_rotary_factor"]
    rotary_dim = int(head_dim * factor)
    if rotary_dim % 2:
        yield Problem("model.text.rope.partial_rotary_factor",
                      f"head_dim {head_dim} × {factor} = {rotary_dim} rotary dims, which is odd",
                      "choose a factor that gives an even rotary dimension", factor, "an even rotary dimension")
        return
    sections = text["rope"]["mrope_section"]
    if sum(sections) != rotary_dim // 2:
        yield Problem("model.text.rope.mrope_section",
                      f"{sections} sums to {sum(sections)}, but there are {rotary_dim // 2} rotary frequencies "
                      f"(head_dim {head_dim} × partial_rotary_factor {factor} = {rotary_dim} rotary dims, halved)",
                      f"make the three sections sum to {rotary_dim // 2}", sections, f"sum {rotary_dim // 2}")


def _check_block_type_names(spec: dict) -> Iterable[Problem]:
    """Compile and checkpointing policies name block types: the text layer types, or `vision` for a
    model with a vision tower."""
    known = block_type_names(spec["model"])
    for name in spec["parallel"]["compile"]:
        if name == VISION_BLOCK_TYPE and name not in known:
            yield Problem(f"parallel.compile.{name}", "this model has no vision tower (no `model.vision`)",
                          f"remove parallel.compile.{name}; block types: {', '.join(known)}", name, f"one of {known}")
        elif name not in known:
            yield Problem(f"parallel.compile.{name}", f"{name!r} is not a block type",
                          did_you_mean(name, known) or f"block types: {', '.join(known)}", name, f"one of {known}")
    policy = spec["parallel"]["activation_checkpointing"]
    for key in ("layers", "op_level"):
        for index, entry in enumerate(policy.get(key, [])):
            if isinstance(entry, str) and entry not in known:
                yield Problem(f"parallel.activation_checkpointing.{key}[{index}]", f"{entry!r} is not a block type",
                              did_you_mean(entry, known) or f"block types: {', '.join(known)}", entry, f"one of {known}")


def _check_family(spec: dict) -> Iterable[Problem]:
    from assembler.model.family import registered_families

    name, known = spec["model"]["family"], registered_families()
    if name not in known:
        yield Problem("model.family", f"no model family {name!r}", f"known families: {', '.join(sorted(known))}",
                      name, " or ".join(sorted(known)))


def _check_mtp(spec: dict) -> Iterable[Problem]:
    """`model.mtp` needs a family that builds the head and a declared layer type for its layer."""
    from assembler.model.family import registered_families

    mtp = spec["model"].get("mtp")
    if mtp is None:
        return
    family = registered_families().get(spec["model"]["family"])
    if family is not None and not family.supports_mtp:
        yield Problem("model.mtp", f"the {family.name} family builds no multi-token-prediction head",
                      "remove model.mtp, or use a family that has one (qwen3_5)", mtp, "absent")
    declared = list(spec["model"]["text"]["layer_types"])
    if mtp["layer_type"] not in declared:
        yield Problem("model.mtp.layer_type", f"{mtp['layer_type']!r} is not a layer type of model.text.layer_types",
                      did_you_mean(mtp["layer_type"], declared) or f"declared layer types: {', '.join(declared)}",
                      mtp["layer_type"], f"one of {declared}")


def _check_precision(spec: dict) -> Iterable[Problem]:
    """Float8 matmuls are for full training: LoRA's rank-r matmuls gain nothing from float8."""
    if spec["parallel"]["precision"]["matmul"] == "float8_rowwise" and spec.get("train", {}).get("adapters") is not None:
        yield Problem("parallel.precision.matmul", "float8_rowwise cannot be combined with LoRA adapters (train.adapters)",
                      "train the adapters with parallel.precision.matmul: param_dtype, or drop train.adapters for full "
                      "training in float8", "float8_rowwise", "param_dtype with train.adapters")


def _check_vision(spec: dict) -> Iterable[Problem]:
    if not spec["model"].get("vision"):
        return
    vision, text_hidden = spec["model"]["vision"], spec["model"]["text"]["hidden_size"]
    out = vision["merger"]["out_hidden_size"]
    if out != text_hidden:
        yield Problem("model.vision.merger.out_hidden_size", f"{out} does not match model.text.hidden_size {text_hidden}",
                      f"set it to {text_hidden}: the merger's output becomes text-tower tokens", out, str(text_hidden))


def _check_token_ids(spec: dict) -> Iterable[Problem]:
    vocab, has_vision = spec["model"]["text"]["vocab_size"], bool(spec["model"].get("vision"))
    for name, token in spec["model"]["tokens"].items():
        if token >= vocab and (has_vision or name not in VISION_TOKEN_KEYS):
            yield Problem(f"model.tokens.{name}", f"{token} is not a valid id for vocab_size {vocab}",
                          f"token ids must be below {vocab}", token, f"an integer < {vocab}")


def _check_activation_checkpointing(spec: dict) -> Iterable[Problem]:
    policy = spec["parallel"]["activation_checkpointing"]
    path = "parallel.activation_checkpointing"
    mode = policy["mode"]
    if mode == "selective" and "layers" not in policy and "op_level" not in policy:
        yield Problem(f"{path}.layers", "mode selective needs the layers to checkpoint",
                      "list layer types (linear, full, vision) and/or layer indices, e.g. layers: [full] "
                      "(fully) or op_level: [linear] (op-level)")
    for key in ("layers", "op_level"):
        if mode != "selective" and key in policy:
            yield Problem(f"{path}.{key}", f"is only used with mode: selective (mode is {mode})",
                          "remove it, or set mode: selective", policy[key], "absent")
    if mode != "auto" and "memory_budget_gib" in policy:
        yield Problem(f"{path}.memory_budget_gib", f"is only used with mode: auto (mode is {mode})",
                      "remove it, or set mode: auto", policy["memory_budget_gib"], "absent")
    num_hidden_layers = spec["model"]["text"]["num_hidden_layers"]
    for key in ("layers", "op_level"):
        for index, entry in enumerate(policy.get(key, [])):
            if isinstance(entry, int) and entry >= num_hidden_layers:
                yield Problem(f"{path}.{key}[{index}]", f"layer index {entry} is out of range",
                              f"the text tower has {num_hidden_layers} layers (0..{num_hidden_layers - 1})", entry, f"< {num_hidden_layers}")
    both = _checkpointed_by(spec, policy.get("layers", [])) & _checkpointed_by(spec, policy.get("op_level", []))
    if both:
        named = ["vision" if i < 0 else i for i in sorted(both)]
        yield Problem(f"{path}.op_level", f"block(s) {named} are listed for full and op-level checkpointing",
                      "give each layer one of the two: remove it from `layers` or from `op_level`",
                      policy.get("op_level"), "layers disjoint from `layers`")


def _checkpointed_by(spec: dict, entries: list) -> set[int]:
    """The text layer indices a `layers` / `op_level` list names (by type or index); vision as -1."""
    layer_types = spec["model"]["text"]["layers"]
    named = {i for i in entries if isinstance(i, int)}
    named |= {i for i, t in enumerate(layer_types) if t in entries}
    return named | ({-1} if "vision" in entries else set())


def _check_packing_length(spec: dict) -> Iterable[Problem]:
    """A document must fit one row: data.packing.length at most train.tokens_per_step (`assemble data`
    packed with the longer length and failed inside the planner; the loader refuses it too)."""
    length, row = spec["data"]["packing"]["length"], spec["train"]["tokens_per_step"]
    if length is not None and length > row:
        yield Problem("data.packing.length", f"{length} is larger than train.tokens_per_step {row}",
                      "a document must fit one row: lower data.packing.length or raise train.tokens_per_step",
                      length, f"<= {row}")


def _check_finite_numbers(spec: dict) -> Iterable[Problem]:
    """No setting is infinite or NaN (YAML's .inf, .nan): JSON Schema's bounds cannot say so, as
    NaN passes every comparison, and such a value would reach the model as a tensor of NaNs."""
    stack: list[tuple[Any, tuple]] = [(spec, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            yield Problem(format_path(path), f"{node} is not a finite number", "write a number", node, "a finite number")
        elif isinstance(node, dict):
            stack.extend((value, path + (key,)) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((value, path + (index,)) for index, value in reversed(list(enumerate(node))))


def _check_registered_blocks(spec: dict) -> Iterable[Problem]:
    from blocks.registry import UnknownBlockError, get_block, registered_blocks

    for path, kind in block_fields(spec).items():
        name: Any = spec
        for key in path:
            name = name[key]
        try:
            get_block(kind, name)
        except UnknownBlockError:
            known = registered_blocks().get(kind, [])
            hint = did_you_mean(name, known) or (
                f"registered {kind} blocks: {', '.join(known)}" if known else f"no {kind} block is registered at all")
            yield Problem(format_path(path), f"{name!r} is not a registered {kind} block", hint, name, f"one of {known}")


_SEMANTIC_CHECKS: tuple[Callable[[dict], Iterable[Problem]], ...] = (
    _check_layer_count,
    _check_layer_types_named,
    _check_block_type_names,
    _check_block_settings,
    _check_mrope_sections,
    _check_family,
    _check_mtp,
    _check_precision,
    _check_vision,
    _check_token_ids,
    _check_activation_checkpointing,
    _check_packing_length,
    _check_registered_blocks,
)
