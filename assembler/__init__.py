"""assemble: build and train models from a YAML spec of registered blocks."""

from assembler.build import build_model
from assembler.hf_checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from assembler.hf_config import hf_config_from_spec, spec_from_hf_config
from assembler.spec import Spec
from assembler.spec_errors import SpecError
from assembler.spec_loading import load_spec, load_spec_from_dict

__all__ = [
    "CheckpointError",
    "Spec",
    "SpecError",
    "build_model",
    "hf_config_from_spec",
    "load_hf_checkpoint",
    "load_spec",
    "load_spec_from_dict",
    "save_hf_checkpoint",
    "spec_from_hf_config",
]
