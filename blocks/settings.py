"""What a block says about its own spec settings beyond their JSON Schema (which checks types and
ranges): relations between settings, e.g. heads that must divide evenly. The assembler turns each
`SettingProblem` into a spec error at the setting's full path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SettingProblem:
    """key: the setting inside the block's section (`num_key_value_heads`); message: what is wrong; hint:
    what to do; value / expected: the value found and a short description of what would do."""

    key: str
    message: str
    hint: str
    value: Any = None
    expected: str = ""


def divisors(n: int) -> str:
    """'1, 2, 4, 8' for 8: the values a hint can offer for 'must divide n'."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
