"""Qwen-VL image preprocessing: resize within pixel bounds, patchify, grid.

Delegates to transformers' `Qwen2VLImageProcessorPil` (the image processor Qwen3.5's processor
uses; the PIL backend needs no torchvision) with Qwen3.5's preprocessor settings: bicubic resize
to multiples of patch_size × merge_size within [min_pixels, max_pixels] (`smart_resize`), rescale
by 1/255, normalise with mean = std = 0.5 (Qwen3.5's `preprocessor_config.json`), each image
repeated `temporal_patch_size` times in time. transformers is imported on first use, so
text-only runs never pay for it.

An image of patch grid (t, h, w) becomes t·h·w rows of `pixel_values` and t·h·w / merge²
`<|image_pad|>` tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from assembler.data.records import DataError

QWEN3_5_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_5_IMAGE_STD = (0.5, 0.5, 0.5)


class ImageProcessor:
    """Images -> (pixel_values [N_patches, C·tp·p·p] fp32, image_grid_thw [I, 3] int64)."""

    def __init__(self, *, patch_size: int, temporal_patch_size: int, merge_size: int, min_pixels: int, max_pixels: int):
        if min_pixels > max_pixels:
            raise DataError(f"data.images: min_pixels {min_pixels} is larger than max_pixels {max_pixels}")
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self._processor = None

    def grid_thw(self, path: Path) -> tuple[int, int, int]:
        """The patch grid (t, h, w) of an image. The image is decoded whole, once, here (while the
        data is checked, before training): a truncated or corrupt file fails now, as a DataError
        naming it, not at batch time hours later."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        with _open(path) as image:
            width, height = image.size
            _decode(image, path)
        factor = self.patch_size * self.merge_size
        try:
            resized_h, resized_w = smart_resize(height, width, factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        except ValueError as error:
            raise DataError(f"image {path}: {error}") from None
        return 1, resized_h // self.patch_size, resized_w // self.patch_size

    def num_tokens(self, grid_thw: tuple[int, int, int]) -> int:
        """Number of `<|image_pad|>` tokens (merged patches) of an image of this grid."""
        t, h, w = grid_thw
        return t * h * w // self.merge_size**2

    def __call__(self, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        """Load and preprocess images in order -> (pixel_values [N, C·tp·p·p], image_grid_thw [I, 3])."""
        images = []
        for path in paths:
            with _open(path) as image:
                _decode(image, path)  # it decoded when checked; a file changed since fails here, named
                images.append(image.convert("RGB"))
        out = self._image_processor()(images, return_tensors="pt")
        return out["pixel_values"].to(torch.float32), out["image_grid_thw"].to(torch.long)

    def _image_processor(self):
        if self._processor is None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            self._processor = Qwen2VLImageProcessorPil(
                patch_size=self.patch_size,
                temporal_patch_size=self.temporal_patch_size,
                merge_size=self.merge_size,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
                image_mean=list(QWEN3_5_IMAGE_MEAN),
                image_std=list(QWEN3_5_IMAGE_STD),
            )
        return self._processor


def _decode(image, path: Path) -> None:
    try:
        image.load()
    # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError, ... on a damaged file.
    except Exception as error:  # noqa: BLE001
        raise DataError(f"image {path} cannot be decoded ({error}); replace or remove it") from None


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"image {path} not found") from None
    except Image.DecompressionBombError:  # Pillow's guard against a small file that decodes to gigabytes
        raise DataError(f"image {path} is larger than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's limit for a "
                        "safe decode; downscale it (training resizes within data.images.max_pixels anyway)") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"image {path} cannot be read as an image ({error})") from None
    except Exception as error:  # noqa: BLE001 (a header Pillow's parsers choke on: struct.error, SyntaxError, ...)
        raise DataError(f"image {path} cannot be read as an image ({type(error).__name__}: {error})") from None
