"""Constants shared by blocks, ops and the assembler: one definition each (assembler imports
blocks, never the reverse, so they live at the bottom)."""

import torch

# The label of a position that trains nothing (padding, prompts under `loss_on: assistant`, the
# last token of a document): the loss ops skip it, as torch's cross_entropy and transformers do.
IGNORE_INDEX = -100

# The spec's dtype names (train.dtype, parallel.fsdp.param_dtype / reduce_dtype, export --dtype).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The spec's `model.tokens` keys only a model with a vision tower reads (a text-only model's
# validation and data pipeline ignore them; `eos` every model reads).
VISION_TOKEN_KEYS = ("image", "video", "vision_start", "vision_end")
