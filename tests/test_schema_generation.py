"""The spec schema is assembled from a hand-written base and the registered blocks' own settings;
the checked-in `assembler/schema/spec.schema.json` is that assembly, and this file fails when it is
stale. Regenerate it with:

    assemble schema --write
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from torch import nn

from assembler.spec import schema as spec_schema
from assembler.spec.schema import (
    BASE_SCHEMA_PATH, REGENERATE_COMMAND, SCHEMA_PATH, BlockSchemaError, assemble_schema, cached_schema, schema_text,
    checked_in_schema, stale_schema_diff, write_schema,
)
from blocks.gated_attention import GatedAttention
from blocks.gated_deltanet import GatedDeltaNet
from blocks.mlp import SwiGLU
from blocks.registry import blocks_of, register, registry_version, unregister
from cli import assemble


def test_the_checked_in_schema_is_what_the_registry_generates():
    diff = stale_schema_diff()
    assert diff is None, f"{SCHEMA_PATH} is stale: run `{REGENERATE_COMMAND}` and commit the result\n{diff}"


def test_generation_is_deterministic_and_independent_of_registration_order():
    builtin = {kind: blocks_of(kind) for kind in spec_schema.BLOCK_SECTION_KINDS}
    reversed_order = {kind: dict(reversed(classes.items())) for kind, classes in reversed(builtin.items())}
    text = schema_text(assemble_schema(builtin))
    assert text == schema_text(assemble_schema(reversed_order)) == schema_text(cached_schema())
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert json.loads(text)["$defs"]["mixer"]["properties"]["block"]["enum"] == ["gated_attention", "gated_deltanet"]


def test_each_blocks_settings_come_from_its_class():
    defs = cached_schema()["$defs"]
    for key, cls in (("mixer_gated_attention", GatedAttention), ("mixer_gated_deltanet", GatedDeltaNet), ("mlp_swiglu", SwiGLU)):
        section = defs[key]
        assert section["additionalProperties"] is False and section["description"] == cls.settings_schema["description"]
        assert section["properties"]["block"]["const"] == key.split("_", 1)[1]
        assert {k: v for k, v in section["properties"].items() if k != "block"} == cls.settings_schema["properties"]
        assert section["required"] == ["block", *cls.settings_schema["required"]]


def test_the_base_holds_no_block_settings():
    """What a block owns lives only in its class: the base names no block, so it never drifts from them."""
    base = json.loads(BASE_SCHEMA_PATH.read_text(encoding="utf-8"))
    assert not any(key.startswith(("mixer_", "mlp_")) for key in base["$defs"])
    for kind in spec_schema.BLOCK_SECTION_KINDS:
        assert "enum" not in base["$defs"][kind]["properties"]["block"] and "allOf" not in base["$defs"][kind]


class _Identity(nn.Module):
    """[..., H] -> [..., H] unchanged: a block with nothing but a schema."""

    settings_schema = {"description": "Does nothing.", "properties": {}}

    def forward(self, x):
        return x


def test_registering_a_block_rebuilds_the_cached_schema():
    before = registry_version()
    register("mlp", "identity_for_a_test")(_Identity)
    try:
        assert registry_version() != before
        schema = cached_schema()
        assert "identity_for_a_test" in schema["$defs"]["mlp"]["properties"]["block"]["enum"]
        assert schema["$defs"]["mlp_identity_for_a_test"]["required"] == ["block"]
        # The checked-in file describes assemble's own blocks only: a block registered by a test
        # (or a plugin) changes the schema specs are validated against, never that file.
        assert "identity_for_a_test" not in checked_in_schema()["$defs"]["mlp"]["properties"]["block"]["enum"]
        assert stale_schema_diff() is None and not write_schema()
    finally:
        unregister("mlp", "identity_for_a_test")
    assert "identity_for_a_test" not in cached_schema()["$defs"]["mlp"]["properties"]["block"]["enum"]
    assert stale_schema_diff() is None


def test_a_block_without_or_with_a_wrong_settings_schema_is_refused_with_what_to_do():
    class NoSchema(nn.Module):
        pass

    with pytest.raises(BlockSchemaError, match=r"mixer block 'bare' \(.*NoSchema\) has no `settings_schema`: give the class"):
        assemble_schema({"mixer": {"bare": NoSchema}})

    class ClaimsTheDiscriminator(nn.Module):
        settings_schema = {"description": "x", "additionalProperties": True, "properties": {"block": {"const": "x"}}}

    with pytest.raises(BlockSchemaError, match=r"sets additionalProperties, properties\.block, which the assembly adds"):
        assemble_schema({"mlp": {"greedy": ClaimsTheDiscriminator}})


def test_cli_schema_prints_checks_and_writes(tmp_path, monkeypatch):
    runner = CliRunner()
    printed = runner.invoke(assemble, ["schema"])
    assert printed.exit_code == 0 and printed.stdout == schema_text(cached_schema())
    assert runner.invoke(assemble, ["schema", "--check"]).exit_code == 0

    stale = tmp_path / "spec.schema.json"
    stale.write_text(SCHEMA_PATH.read_text(encoding="utf-8").replace("Number of query heads.", "Query heads."))
    monkeypatch.setattr(spec_schema, "SCHEMA_PATH", stale)
    checked = runner.invoke(assemble, ["schema", "--check"])
    assert checked.exit_code == 1
    assert '-          "description": "Query heads.",' in checked.stderr
    assert f"error: {stale} is stale" in checked.stderr and f"run `{REGENERATE_COMMAND}`" in checked.stderr

    written = runner.invoke(assemble, ["schema", "--write"])
    assert written.exit_code == 0 and written.stdout == f"wrote {stale}\n"
    assert stale.read_text(encoding="utf-8") == SCHEMA_PATH.read_text(encoding="utf-8")
    assert not write_schema(stale)  # already current: nothing written
    assert runner.invoke(assemble, ["schema", "--write", "--check"]).exit_code == 2
