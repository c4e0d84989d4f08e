"""What every family's config.json reader shares: collect refusals by field, never guess.

An import must never silently build a different model, so a family's reader refuses (as a
`Problem` naming the field) every value it cannot represent and every field it does not know.
"""

from __future__ import annotations

from typing import Any

from assembler.spec.errors import Problem

# Bookkeeping of every PreTrainedConfig (and of inference engines): no effect on the architecture.
BOOKKEEPING_FIELDS = frozenset({
    "transformers_version", "_name_or_path", "dtype", "torch_dtype", "output_hidden_states", "output_attentions",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "use_cache", "pad_token_id", "bos_token_id", "tokenizer_class", "architectures",
})
MOE_FIELDS = frozenset({
    "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
    "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "output_router_logits", "norm_topk_prob",
})


class ConfigReader:
    """Reads an HF config into a spec `model` section, collecting every refusal as a problem.

    `family_file` names the module a user would extend to read a field it does not know."""

    def __init__(self, where: str | None, *, family_file: str, dense_models: str):
        self.where = where
        self.family_file = family_file
        self.dense_models = dense_models  # e.g. "dense Qwen3.5 models", for the MoE refusal
        self.problems: list[Problem] = []

    def refuse(self, field: str, message: str, hint: str = "", value: Any = None) -> None:
        self.problems.append(Problem(field, message, hint, value, file=self.where))

    def expect(self, section: dict, prefix: str, field: str, wanted: Any, why: str) -> None:
        if field in section and section[field] != wanted:
            self.refuse(f"{prefix}{field}", f"{section[field]!r} cannot be represented", f"{why} (only {wanted!r} is)", section[field])

    def unknown(self, section: dict, prefix: str, known: set[str] | frozenset[str]) -> None:
        for field in section:
            if field in MOE_FIELDS:
                self.refuse(f"{prefix}{field}", "mixture-of-experts configs cannot be represented",
                            f"only {self.dense_models} are supported", section[field])
            elif field not in known:
                self.refuse(f"{prefix}{field}", "unknown field: assemble cannot tell whether it changes the architecture",
                            f"remove it if it does not, or extend {self.family_file}", section[field])

    def eos_token_id(self, section: dict, prefix: str) -> int | None:
        """The one eos id of `section["eos_token_id"]` (an int or a one-element list), or None."""
        eos = section.get("eos_token_id")
        if isinstance(eos, list) and len(eos) == 1:
            eos = eos[0]
        if isinstance(eos, int) or eos is None:
            return eos
        self.refuse(f"{prefix}eos_token_id", f"{eos!r} cannot be represented", "a spec has one eos token id", eos)
        return None
