"""Qwen3.5 video preprocessing: decode, sample frames by fps, resize, patchify, frame timestamps.

What transformers' Qwen3.5 processor does to a video (`Qwen3VLVideoProcessor` inside
`Qwen3VLProcessor`, transformers 5.x), step for step:

1. decode with PyAV as `transformers.video_utils.read_video_pyav` does: the stream's frame count
   and average rate, frames converted to RGB24 (a stream that does not record its frame count is
   counted by decoding it first);
2. sample frames: n = int(total / video_fps · fps), clamped to [min_frames, max_frames] and to the
   total, at indices `linspace(0, total - 1, n).round()` (`Qwen3VLVideoProcessor.sample_frames`);
3. resize every frame to the same (h, w): `smart_resize` of Qwen3-VL's video processor (multiples
   of patch_size · merge_size, frames × h × w within [min_pixels, max_pixels]), bicubic with
   antialiasing on the uint8 frames (torchvision's CPU kernel for uint8 bicubic is
   `torch.nn.functional.interpolate` on uint8, which is what runs here);
4. normalise: (x − 127.5) / 127.5 in fp32 (rescale 1/255 fused with mean = std = 0.5, the fused
   form transformers computes);
5. patchify: frames padded by repeating the last to a multiple of temporal_patch_size, then laid
   out as `Qwen3VLVideoProcessor.patchify` does -> [grid_t · grid_h · grid_w, C · tp · p · p];
6. timestamps: per temporal patch, the mean of its first and last frame's time in seconds
   (`Qwen3VLProcessor._calculate_timestamps`), written `<{t:.1f} seconds>` before each frame group.

Hand-written, not delegated as images.py delegates to transformers: transformers' video processor
needs torchvision (its RGB conversion, resize and normalise call `torchvision.transforms.v2`), and
PyPI's torchvision does not work beside our torch CPU build. Only `smart_resize`, a plain function,
is transformers' own. tests/test_data_videos.py checks every step against transformers (sampling,
patchify and timestamps against its functions; the whole processor, run with a stand-in for the
three torchvision calls transcribed from torchvision's source) bitwise.

The reader is PyAV (`pip install av`, the `video` extra): a binary wheel with FFmpeg inside, so no
system FFmpeg; transformers' own default reader for its PyAV backend, so its frames are what
transformers decodes; it installs beside any torch; and it is maintained. decord's last release is
0.6.0 (2021, x86-64 wheels only); torchvision removed its video decoding (0.26, transformers'
video_utils says) and PyPI's torchvision does not work beside our torch CPU build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assembler.data.records import DataError

QWEN3_5_VIDEO_MEAN = (0.5, 0.5, 0.5)
QWEN3_5_VIDEO_STD = (0.5, 0.5, 0.5)
RESCALE_FACTOR = 1 / 255


@dataclass(frozen=True)
class VideoLayout:
    """How a video appears in the token stream.

    grid:       (t, h, w) patch grid; t temporal patches (frame groups) of h × w patches.
    timestamps: seconds of each frame group (len t), written `<{s:.1f} seconds>` before it.
    """

    grid: tuple[int, int, int]
    timestamps: tuple[float, ...]


@dataclass(frozen=True)
class _Decoded:
    frames: np.ndarray  # [N, H, W, 3] uint8, the sampled frames
    indices: list[int]  # the sampled frame indices (may hold repeats; then N < len(indices))
    fps: float


class VideoProcessor:
    """Videos -> (pixel_values_videos [N_patches, C·tp·p·p] fp32, video_grid_thw [V, 3] int64)."""

    def __init__(self, *, patch_size: int, temporal_patch_size: int, merge_size: int, fps: float, min_frames: int,
                 max_frames: int, min_pixels: int, max_pixels: int):
        if min_pixels > max_pixels:
            raise DataError(f"data.videos: min_pixels {min_pixels} is larger than max_pixels {max_pixels}")
        if min_frames > max_frames:
            raise DataError(f"data.videos: min_frames {min_frames} is larger than max_frames {max_frames}")
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.fps = fps
        self.min_frames = min_frames
        self.max_frames = max_frames
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def layout(self, path: Path) -> VideoLayout:
        """The grid and frame timestamps of a video. Its sampled frames are decoded here, once, while
        the data is checked: an unreadable or empty video fails now, as a DataError naming it."""
        decoded = self._decode(path)
        grid = self._grid(decoded.frames.shape[0], *decoded.frames.shape[1:3], path)
        timestamps = frame_group_timestamps(decoded.indices, decoded.fps, self.temporal_patch_size)
        return VideoLayout(grid=grid, timestamps=tuple(timestamps[: grid[0]]))

    def frame_tokens(self, grid_thw: tuple[int, int, int]) -> int:
        """`<|video_pad|>` tokens of one frame group (each of the t groups has its own run)."""
        _, h, w = grid_thw
        return h * w // self.merge_size**2

    def __call__(self, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and preprocess videos in order -> (pixel_values_videos [N, C·tp·p·p], video_grid_thw [V, 3])."""
        pixels, grids = [], []
        for path in paths:
            frames = self._decode(path).frames
            resized_h, resized_w = self._resized_size(frames.shape[0], *frames.shape[1:3], path)
            video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, C, H, W] uint8
            video = resize_uint8_bicubic(video, resized_h, resized_w)
            video = normalize(video, QWEN3_5_VIDEO_MEAN, QWEN3_5_VIDEO_STD)
            patches, grid = patchify(video, self.patch_size, self.temporal_patch_size, self.merge_size)
            pixels.append(patches)
            grids.append(grid)
        return torch.cat(pixels), torch.tensor(grids, dtype=torch.long)

    def sample_indices(self, total_frames: int, video_fps: float) -> np.ndarray:
        """The frames to keep (`Qwen3VLVideoProcessor.sample_frames` with fps set, num_frames not)."""
        num_frames = int(total_frames / video_fps * self.fps)
        num_frames = min(max(num_frames, self.min_frames), self.max_frames, total_frames)
        return np.linspace(0, total_frames - 1, num_frames).round().astype(int)

    def _grid(self, num_frames: int, height: int, width: int, path: Path) -> tuple[int, int, int]:
        resized_h, resized_w = self._resized_size(num_frames, height, width, path)
        grid_t = -(-num_frames // self.temporal_patch_size)
        return grid_t, resized_h // self.patch_size, resized_w // self.patch_size

    def _resized_size(self, num_frames: int, height: int, width: int, path: Path) -> tuple[int, int]:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        if num_frames < self.temporal_patch_size:
            raise DataError(
                f"video {path}: {num_frames} frame(s) sampled, fewer than model.vision.temporal_patch_size "
                f"{self.temporal_patch_size}; use a longer video or remove it"
            )
        try:
            return smart_resize(num_frames, height, width, temporal_factor=self.temporal_patch_size,
                                factor=self.patch_size * self.merge_size, min_pixels=self.min_pixels,
                                max_pixels=self.max_pixels)
        except ValueError as error:
            raise DataError(f"video {path}: {error}") from None

    def _decode(self, path: Path) -> _Decoded:
        av = _import_av()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"video {path} not found")
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise DataError(f"video {path} has no video stream")
                stream = container.streams.video[0]
                total = stream.frames or sum(1 for _ in container.decode(stream))  # 0: not recorded in the header
                if total == 0:
                    raise DataError(f"video {path} has no frames; replace or remove it")
                video_fps = float(stream.average_rate or stream.guessed_rate or 24)  # transformers, too, falls back to 24
                indices = self.sample_indices(total, video_fps)
                wanted, last = set(indices.tolist()), int(indices[-1])
                container.seek(0)
                frames = []
                for index, frame in enumerate(container.decode(stream)):
                    if index > last:
                        break
                    if index in wanted:
                        frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError as error:
            raise DataError(f"video {path} cannot be read as a video ({error}); replace or remove it") from None
        if not frames:
            raise DataError(f"video {path}: no frame could be decoded (its header claims {total}); replace or remove it")
        return _Decoded(frames=np.stack(frames), indices=indices.tolist(), fps=video_fps)


def frame_group_timestamps(indices: list[int], video_fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal patch: the mean of its first and last frame's time, after padding
    the indices by repeating the last (`Qwen3VLProcessor._calculate_timestamps`)."""
    indices = list(indices)
    if len(indices) % temporal_patch_size:
        indices += [indices[-1]] * (temporal_patch_size - len(indices) % temporal_patch_size)
    seconds = [index / video_fps for index in indices]
    return [(seconds[i] + seconds[i + temporal_patch_size - 1]) / 2 for i in range(0, len(seconds), temporal_patch_size)]


def resize_uint8_bicubic(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, C, H, W] uint8 -> [T, C, height, width] uint8: torchvision's `resize` (bicubic, antialias)
    on the CPU, which for uint8 calls this interpolate directly and returns the input at its size."""
    if video.shape[-2:] == (height, width):
        return video
    return torch.nn.functional.interpolate(video, size=[height, width], mode="bicubic", align_corners=False, antialias=True)


def normalize(video: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[T, C, H, W] uint8 -> fp32 (x − mean/rescale) / (std/rescale), as transformers fuses rescale into normalise."""
    mean_ = (torch.tensor(mean) * (1.0 / RESCALE_FACTOR)).view(-1, 1, 1)
    std_ = (torch.tensor(std) * (1.0 / RESCALE_FACTOR)).view(-1, 1, 1)
    return video.to(torch.float32).sub_(mean_).div_(std_)


def patchify(video: torch.Tensor, patch_size: int, temporal_patch_size: int, merge_size: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[T, C, H, W] -> ([grid_t · grid_h · grid_w, C · tp · p · p], (grid_t, grid_h, grid_w)), patches in
    merge-window order (each merge × merge window of patches consecutive), as the vision tower reads them."""
    if pad := -video.shape[0] % temporal_patch_size:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    frames, channels, height, width = video.shape
    grid_t, grid_h, grid_w = frames // temporal_patch_size, height // patch_size, width // patch_size
    patches = video.view(grid_t, temporal_patch_size, channels, grid_h // merge_size, merge_size, patch_size,
                         grid_w // merge_size, merge_size, patch_size)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size**2), (grid_t, grid_h, grid_w)


def _import_av():
    try:
        import av
    except ImportError:
        raise DataError("the data has videos, which need PyAV: `pip install av` (or the `video` extra)") from None
    return av


def seconds_text(seconds: float) -> str:
    """The timestamp text before a frame group, as Qwen3VLProcessor writes it."""
    return f"<{seconds:.1f} seconds>"


__all__ = ["VideoLayout", "VideoProcessor", "frame_group_timestamps", "normalize", "patchify", "resize_uint8_bicubic",
           "seconds_text"]
