"""Third-party blocks and families arrive through entry points (`assemble.blocks`,
`assemble.families`), nothing in assemble edited: the installed entry points are faked here."""

from __future__ import annotations

import sys
import types

import pytest
from torch import nn

import assembler.model.family as family_module
import blocks.registry as registry
from assembler.families.qwen3 import Qwen3


class _EntryPoint:
    def __init__(self, load):  # noqa: ANN001 (what EntryPoint.load returns)
        self.load = load


def test_a_plugin_module_named_by_an_entry_point_registers_its_blocks(monkeypatch):
    plugin = types.ModuleType("plugin_blocks_for_test")

    def load():  # importing a plugin module runs its @register
        sys.modules[plugin.__name__] = plugin
        registry.register("mlp", "plugin_mlp")(type("PluginMLP", (nn.Module,), {}))
        return plugin

    monkeypatch.setattr(registry, "entry_points", lambda group: [_EntryPoint(load)] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "plugin_mlp" in registry.registered_blocks()["mlp"]
    finally:
        registry.unregister("mlp", "plugin_mlp")
        sys.modules.pop(plugin.__name__, None)


def test_a_family_named_by_an_entry_point_is_known_by_name_and_model_type(monkeypatch):
    class PluginFamily(Qwen3):
        name = "plugin_family"
        hf_model_types = ("plugin_model_type",)

    # The built-in families register into _FAMILIES when their modules are first imported: do that
    # before the dict is swapped for a copy, or a first import here registers into the copy alone
    # and the family is gone for every later test once the copy is dropped.
    family_module.registered_families()
    monkeypatch.setattr(family_module, "entry_points",
                        lambda group: [_EntryPoint(lambda: PluginFamily)] if group == family_module.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(family_module, "_FAMILIES", dict(family_module._FAMILIES))
    family_module._load_families.cache_clear()
    try:
        assert family_module.family_named("plugin_family").name == "plugin_family"
        assert family_module.family_for_hf_model_type("plugin_model_type").name == "plugin_family"
        with pytest.raises(KeyError, match="known families: .*plugin_family"):
            family_module.family_named("nope")
    finally:
        family_module._load_families.cache_clear()
