"""assemble: build and train models from a YAML spec of registered blocks.

The names a plugin or a script uses, whatever package of assembler/ they live in: the spec
(`load_spec`, `Spec`, the error types), the build (`build_model`), HF checkpoints, and the family
interface a third-party family implements (`ModelFamily`, `BlockRef`, the tower builders).
Blocks register in `blocks.registry` (`register`, `get_block`).
"""

from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from assembler.hf.config import hf_config_from_spec, spec_from_hf_config
from assembler.model.build import build_model
from assembler.model.family import (
    BlockRef,
    ModelFamily,
    family_for_hf_model_type,
    family_of,
    family_of_model,
    register_family,
    registered_families,
)
from assembler.model.towers import build_multi_token_prediction, build_text_tower, build_vision_tower, text_blocks, text_summary_rows
from assembler.spec import Spec
from assembler.spec.errors import Problem, SpecError, UserError
from assembler.spec.loading import load_spec, load_spec_from_dict

__all__ = [
    "BlockRef",
    "CheckpointError",
    "ModelFamily",
    "Problem",
    "Spec",
    "SpecError",
    "UserError",
    "build_model",
    "build_multi_token_prediction",
    "build_text_tower",
    "build_vision_tower",
    "family_for_hf_model_type",
    "family_of",
    "family_of_model",
    "hf_config_from_spec",
    "load_hf_checkpoint",
    "load_spec",
    "load_spec_from_dict",
    "register_family",
    "registered_families",
    "save_hf_checkpoint",
    "spec_from_hf_config",
    "text_blocks",
    "text_summary_rows",
]
