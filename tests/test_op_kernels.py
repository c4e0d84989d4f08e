"""OpTable.backends names, per op, the backend and the kernel(s) it runs on this machine, including
the choices a `fast` op makes at run time (ARCHITECTURE.md: a block's kernel choices are recorded)."""

import pytest

from blocks.ops import OP_NAMES, OpChoice, resolve_ops
from blocks.ops import fast_attention, fast_delta_rule


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_every_op_records_its_backend_and_a_kernel(backend):
    table = resolve_ops(backend)
    assert [choice.op for choice in table.backends] == list(OP_NAMES)
    for choice in table.backends:
        assert isinstance(choice, OpChoice) and choice.backend == backend and choice.kernel.strip()
    assert table.describe().splitlines()[0].startswith(f"attention: {backend} (")


def test_overrides_are_recorded_per_op():
    choices = {choice.op: choice for choice in resolve_ops("hf", {"cross_entropy": "fast"}).backends}
    assert choices["cross_entropy"].backend == "fast" and "chunked" in choices["cross_entropy"].kernel
    assert choices["attention"].backend == "hf"


def test_fast_attention_names_the_kernel_this_machine_picks(monkeypatch):
    monkeypatch.setattr(fast_attention, "_flash_attn_varlen", None)
    monkeypatch.setattr(fast_attention, "_VARLEN_HAS_GQA", False)
    note = fast_attention.kernel()
    assert note.startswith("torch varlen_attn") and "key/value heads repeated" in note and "scaled_dot_product_attention" in note
    monkeypatch.setattr(fast_attention, "_VARLEN_HAS_GQA", True)
    assert "native GQA" in fast_attention.kernel()
    monkeypatch.setattr(fast_attention, "_flash_attn_varlen", object())  # flash-attn importable: it runs every batch
    assert fast_attention.kernel() == "flash-attn varlen, native GQA"


def test_fast_delta_rule_says_when_fla_is_missing(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fla" else real_find_spec(name, *a))
    assert "fla not installed" in fast_delta_rule.kernel()
