"""The registered building blocks of assembled models.

Importing this package registers every block (see `blocks.registry`). Blocks are plain PyTorch
modules: everything they need arrives in their constructor (their spec section and the resolved
op table) or in `forward` (tensors and the read-only context); none reads a global.
"""

from blocks import (  # noqa: F401  (imported for their @register side effect)
    decoder_layer,
    gated_attention,
    gated_deltanet,
    mlp,
    norms,
    patch_merger,
    vision_tower,
)
