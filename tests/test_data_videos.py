"""Video records (issue 16): `{"type": "video", "path": ...}` parts processed as transformers' Qwen3.5
processor does, and a video chat's logits, loss and gradients bitwise transformers'.

transformers' video processor needs torchvision, which does not install beside our torch CPU build,
so assembler/data/videos.py is hand-written. What is compared, and how:

- frame sampling, patch layout and frame timestamps: against transformers' own functions
  (`Qwen3VLVideoProcessor.sample_frames` / `.patchify`, `Qwen3VLProcessor._calculate_timestamps`),
  which need no torchvision;
- the whole path: transformers' `load_video(backend="pyav")`, then transformers' `Qwen3VLProcessor`
  (chat template, video processor: resize sizes, fused rescale+normalise constants, patchify,
  timestamp and `<|video_pad|>` expansion, tokenizer) run with `TORCHVISION`, a stand-in for the three
  torchvision calls it makes (grayscale_to_rgb, resize, normalize), transcribed from
  torchvision.transforms.v2.functional's CPU code for these inputs (resize of uint8 bicubic on the
  CPU is `torch.nn.functional.interpolate` on the uint8 tensor, returned unchanged at equal size;
  normalize is `(x - mean) / std` in the image's dtype). The resize kernel is therefore the same
  PyTorch call on both sides: what this checks is everything around it, not the kernel.
Everything is torch.equal (no tolerance): the arithmetic is the same on both sides.
"""

from __future__ import annotations

import contextlib
import enum
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

av = pytest.importorskip("av")

from assembler.data import DataError, ImageProcessor, encode_chat, load_tokenizer  # noqa: E402
from assembler.data.chat_template import CHAT_TEMPLATE_FILE, VIDEO_PAD, VISION_END, VISION_START  # noqa: E402
from assembler.data.encoding import encode_records  # noqa: E402
from assembler.data.packing import collate_row, fit_to_budget  # noqa: E402
from assembler.data.records import parse_record, read_jsonl  # noqa: E402
from assembler.data.videos import VideoProcessor, frame_group_timestamps, patchify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
TINY_IMAGES = ROOT / "specs" / "data" / "tiny" / "images"
TOKENS = dict(image=248056, video=248057, vision_start=248053, vision_end=248054, eos=248044)
PIXELS = dict(min_pixels=4096, max_pixels=65536)  # small bounds, so the tiny videos stay a few patches
VISION = dict(patch_size=16, temporal_patch_size=2, merge_size=2)


def write_video(path: Path, *, frames: int = 8, fps: int = 4, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A short mpeg4 video of random frames (width, height = size)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def our_video_processor(**overrides) -> VideoProcessor:
    return VideoProcessor(**{**VISION, "fps": 2, "min_frames": 4, "max_frames": 768, **PIXELS, **overrides})


def our_image_processor() -> ImageProcessor:
    return ImageProcessor(**VISION, **PIXELS)


# --- transformers' processor, with a stand-in for torchvision -----------------------------------

class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _resize(image, size, interpolation=_InterpolationMode.BILINEAR, antialias=True, max_size=None):
    # torchvision.transforms.v2.functional.resize_image, for what the video processor passes: a
    # uint8 CPU tensor, bicubic (uint8 is resized natively on the CPU, no cast), an explicit size.
    assert interpolation is _InterpolationMode.BICUBIC and image.dtype == torch.uint8 and image.device.type == "cpu"
    shape = image.shape
    channels, height, width = shape[-3:]
    new_height, new_width = size
    if (new_height, new_width) == (height, width):
        return image
    image = image.reshape(-1, channels, height, width)
    image = torch.nn.functional.interpolate(image, size=[new_height, new_width], mode="bicubic", align_corners=False,
                                            antialias=antialias)
    return image.reshape(shape[:-3] + (channels, new_height, new_width))


def _normalize(image, mean, std, inplace=False):
    # torchvision.transforms.v2.functional.normalize_image.
    mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device)
    std = torch.as_tensor(std, dtype=image.dtype, device=image.device)
    mean = mean.view(-1, 1, 1) if mean.ndim == 1 else mean
    std = std.view(-1, 1, 1) if std.ndim == 1 else std
    image = image.sub_(mean) if inplace else image.sub(mean)
    return image.div_(std)


def _grayscale_to_rgb(image):
    # torchvision.transforms.v2.functional.grayscale_to_rgb: 3-channel input is returned as is.
    return image if image.shape[-3] == 3 else image.expand(image.shape[:-3] + (3,) + image.shape[-2:])


TORCHVISION = types.SimpleNamespace(InterpolationMode=_InterpolationMode, resize=_resize, normalize=_normalize,
                                    grayscale_to_rgb=_grayscale_to_rgb)


@contextlib.contextmanager
def torchvision_stand_in():
    """transformers' video processing modules see TORCHVISION as `tvF` (they import torchvision's
    functional module as that name when torchvision is installed)."""
    from unittest import mock

    import transformers.image_processing_backends as backends
    import transformers.image_utils as image_utils
    import transformers.models.qwen3_vl.video_processing_qwen3_vl as qwen3_vl_video
    import transformers.video_processing_utils as video_utils
    from transformers.image_utils import PILImageResampling

    mapping = {**image_utils.pil_torch_interpolation_mapping, PILImageResampling.BICUBIC: _InterpolationMode.BICUBIC}
    with contextlib.ExitStack() as stack:
        for module in (backends, qwen3_vl_video, video_utils):
            stack.enter_context(mock.patch.object(module, "tvF", TORCHVISION, create=True))
        stack.enter_context(mock.patch.object(backends, "pil_torch_interpolation_mapping", mapping))
        yield


def transformers_video_processor():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLVideoProcessor(**VISION, fps=2, min_frames=4, max_frames=768, cap_pixels_per_frame=False,
                                 size={"shortest_edge": PIXELS["min_pixels"], "longest_edge": PIXELS["max_pixels"]})


@pytest.fixture(scope="module")
def hf_processor(tmp_path_factory):
    """transformers' Qwen3VLProcessor (Qwen3.5's) over the tiny spec's tokenizer as an export writes it."""
    from unittest import mock

    from transformers import AutoTokenizer, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    from assembler import load_spec
    from assembler.hf.checkpoint.serving_files import serving_files

    folder = tmp_path_factory.mktemp("tokenizer")
    for name, text in serving_files(load_spec(TINY)).items():
        (folder / name).write_text(text)
    image_processor = Qwen2VLImageProcessorPil(**VISION, **PIXELS, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video_processor = transformers_video_processor()
    # Without torchvision, transformers' registry of video processor classes is a placeholder the
    # processor's type check cannot read; the check is skipped for this one sub-processor.
    check = ProcessorMixin.check_argument_for_proper_class
    skip_video = lambda self, name, argument: None if argument is video_processor else check(self, name, argument)  # noqa: E731
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", skip_video):
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(folder),
                                video_processor=video_processor, chat_template=CHAT_TEMPLATE_FILE.read_text())


def hf_inputs(processor, messages: list[dict], base_dir: Path) -> dict:
    """transformers' processor path for a chat: its chat template, its PyAV reader and frame sampling,
    its processor (images, videos, placeholder expansion, tokenizer)."""
    from PIL import Image
    from transformers.video_utils import load_video

    text = processor.apply_chat_template(messages, tokenize=False)
    parts = [part for message in messages if isinstance(message["content"], list) for part in message["content"]]
    images = [Image.open(base_dir / part["path"]).convert("RGB") for part in parts if part["type"] == "image"]
    videos, metadata = [], []
    for part in parts:
        if part["type"] == "video":
            frames, meta = load_video(str(base_dir / part["path"]), backend="pyav",
                                      sample_indices_fn=processor.video_processor.sample_frames)
            videos.append(frames)
            metadata.append(meta)
    with torchvision_stand_in():
        return processor(text=[text], images=images or None, videos=videos or None, video_metadata=metadata or None,
                         do_sample_frames=False, return_tensors="pt")


def our_row(messages: list[dict], base_dir: Path) -> tuple:
    """Our data pipeline: record -> encode_chat -> collate_row (one document, no padding)."""
    record = parse_record(json.dumps({"messages": messages}), source="test.jsonl:1", base_dir=base_dir)
    images, videos = our_image_processor(), our_video_processor()
    sample = encode_chat(record, load_tokenizer(None), image_grid=images.grid_thw, image_tokens=images.num_tokens,
                         video_layout=videos.layout, video_frame_tokens=videos.frame_tokens)
    row = collate_row([sample], budget=len(sample), pad_token_id=TOKENS["eos"], image_token_id=TOKENS["image"],
                      spatial_merge_size=2, image_processor=images, video_token_id=TOKENS["video"], video_processor=videos)
    return sample, row


def chat(*content: dict, answer: str = "A blue square moves right.") -> list[dict]:
    return [{"role": "user", "content": [*content, {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    write_video(folder / "a.mp4")  # 8 frames at 4 fps: 4 sampled, resized 48x64 -> 64x64, grid (2, 4, 4)
    write_video(folder / "b.mp4", frames=13, fps=5, size=(80, 40), seed=1)  # 5 frames sampled: an odd count, padded
    (folder / "img.png").write_bytes((TINY_IMAGES / "0000.png").read_bytes())
    return folder


# --- the pieces, against transformers' functions -------------------------------------------------

@pytest.mark.parametrize("total, video_fps, fps, min_frames, max_frames", [
    (8, 4.0, 2, 4, 768), (300, 30.0, 2, 4, 768), (3, 24.0, 2, 4, 768), (1000, 29.97, 1.5, 4, 16), (50, 10.0, 0.1, 4, 768),
])
def test_frame_sampling_equals_transformers(total, video_fps, fps, min_frames, max_frames):
    from transformers.video_utils import VideoMetadata

    theirs = transformers_video_processor()
    theirs.min_frames, theirs.max_frames = min_frames, max_frames
    expected = theirs.sample_frames(VideoMetadata(total_num_frames=total, fps=video_fps), fps=fps)
    ours = our_video_processor(fps=fps, min_frames=min_frames, max_frames=max_frames)
    assert np.array_equal(ours.sample_indices(total, video_fps), expected)


@pytest.mark.parametrize("frames", [4, 5])
def test_patchify_equals_transformers(frames):
    video = torch.randn(frames, 3, 64, 96, generator=torch.Generator().manual_seed(frames))
    expected, *grid = transformers_video_processor().patchify(video[None], patch_size=16, merge_size=2, temporal_patch_size=2)
    ours, our_grid = patchify(video, 16, 2, 2)
    assert torch.equal(ours, expected[0]) and list(our_grid) == grid


@pytest.mark.parametrize("indices, fps", [([0, 2, 5, 7], 4.0), ([0, 3, 6, 9, 12], 5.0), ([0, 1, 2], 29.97)])
def test_timestamps_equal_transformers(indices, fps):
    from transformers import Qwen3VLProcessor

    expected = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    assert frame_group_timestamps(indices, fps, 2) == expected


# --- the whole path: done-when 2 -----------------------------------------------------------------

@pytest.mark.parametrize("parts", [
    [{"type": "video", "path": "a.mp4"}],
    [{"type": "image", "path": "img.png"}, {"type": "video", "path": "b.mp4"}, {"type": "video", "path": "a.mp4"}],
], ids=["one_video", "image_and_two_videos"])
def test_pixels_grids_tokens_and_positions_equal_transformers(hf_processor, media, parts):
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Model

    from tests.oracle import tiny_config

    messages = chat(*parts)
    expected = hf_inputs(hf_processor, messages, media)
    sample, row = our_row(messages, media)

    assert torch.equal(row["input_ids"], expected["input_ids"])  # timestamps, nesting and <|video_pad|> counts
    assert torch.equal(row["pixel_values_videos"], expected["pixel_values_videos"])
    assert torch.equal(row["video_grid_thw"], expected["video_grid_thw"])
    if "pixel_values" in expected:
        assert torch.equal(row["pixel_values"], expected["pixel_values"])
        assert torch.equal(row["image_grid_thw"], expected["image_grid_thw"])

    with torch.device("meta"):
        reference = Qwen3_5Model(tiny_config())
    positions, _ = reference.get_rope_index(
        expected["input_ids"], expected["mm_token_type_ids"], image_grid_thw=expected.get("image_grid_thw"),
        video_grid_thw=expected["video_grid_thw"],
    )
    assert torch.equal(row["packing"].position_ids, positions)


def test_the_video_layout_in_tokens(media):
    """What the comparison above pins down, spelled out: an outer <|vision_start|>…<|vision_end|>,
    inside it per frame group `<t seconds>` and its own block of h·w/4 <|video_pad|>."""
    tokenizer = load_tokenizer(None)
    sample, _ = our_row(chat({"type": "video", "path": "a.mp4"}), media)
    text = tokenizer.decode(sample.input_ids)
    frame = f"{VISION_START}{VIDEO_PAD * 4}{VISION_END}"
    assert f"{VISION_START}<0.2 seconds>{frame}<1.5 seconds>{frame}{VISION_END}" in text  # frames 0, 2 | 5, 7 at 4 fps
    assert sample.video_grids == [(2, 4, 4)]
    assert all(label == -100 for token, label in zip(sample.input_ids[1:], sample.labels) if token == TOKENS["video"])


# --- the model: done-when 1 ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import Qwen3_5ForConditionalGeneration

    from assembler import build_model, spec_from_hf_config
    from tests.oracle import randomize_parameters_, tiny_config

    config = tiny_config(text={"vocab_size": 248320})  # the real tokenizer's ids, the real vision token ids
    folder = tmp_path_factory.mktemp("reference")
    randomize_parameters_(Qwen3_5ForConditionalGeneration(config), seed=1, std=0.05).save_pretrained(folder)
    reference = Qwen3_5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    ours = build_model(spec_from_hf_config(config.to_dict()), dtype=torch.float32)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def test_video_chat_logits_loss_and_every_gradient_are_bitwise_transformers(hf_processor, media, models):
    reference, ours = models
    reference.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    messages = chat({"type": "image", "path": "img.png"}, {"type": "video", "path": "a.mp4"}, {"type": "video", "path": "b.mp4"})
    theirs_in = hf_inputs(hf_processor, messages, media)
    sample, row = our_row(messages, media)
    # transformers shifts `labels` itself; ours are next-token aligned (shift_labels[t] is the target of t).
    labels = torch.cat([torch.tensor([[-100]]), row["shift_labels"][:, :-1]], dim=1)

    expected = reference(**{k: theirs_in[k] for k in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw",
                                                       "pixel_values_videos", "video_grid_thw")},
                         labels=labels, use_cache=False)
    expected.loss.backward()
    got = ours(**{k: v for k, v in row.items()}, return_logits=True)
    got.loss.backward()

    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.loss, expected.loss)
    reference_grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None, name
        assert torch.equal(parameter.grad, reference_grads[name].grad), f"gradient of {name} differs"
    assert len(list(ours.parameters())) == len(reference_grads)


@torch.no_grad()
def test_the_videos_matter(media, models):
    """A control: the comparison above would catch a model that ignored its video frames."""
    _, ours = models
    _, row = our_row(chat({"type": "video", "path": "a.mp4"}), media)
    a = ours(**row, return_logits=True).logits
    b = ours(**{**row, "pixel_values_videos": row["pixel_values_videos"].flip(0)}, return_logits=True).logits
    assert not torch.equal(a, b)


# --- bad data: done-when 3 -----------------------------------------------------------------------

def _write_records(folder: Path, videos: list[str]) -> Path:
    lines = [json.dumps({"messages": chat({"type": "video", "path": name})}) for name in videos]
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_video_is_an_error_naming_the_line(tmp_path):
    write_video(tmp_path / "good.mp4")
    path = _write_records(tmp_path, ["good.mp4", "missing.mp4"])
    with pytest.raises(DataError, match=r"data.jsonl:2: messages\[0\].content\[0\]: video 'missing.mp4' not found"):
        read_jsonl(path)
    result = read_jsonl(path, on_error="skip")
    assert len(result.records) == 1 and "missing.mp4" in result.skipped[0]


def _empty_video(path: Path) -> Path:
    """A container with a video stream (AVI keeps it) or none (MP4 drops it) and no frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("bad, message", [
    ("text.mp4", r"text.mp4 cannot be read as a video"),
    ("empty.avi", r"empty.avi has no frames"),
    ("empty.mp4", r"empty.mp4 has no video stream"),
    ("one_frame.mp4", r"one_frame.mp4: 1 frame\(s\) sampled, fewer than model.vision.temporal_patch_size 2"),
])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_unreadable_or_empty_video_obeys_on_error_and_names_the_record(tmp_path, bad, message, on_error):
    write_video(tmp_path / "good.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    _empty_video(tmp_path / "empty.avi")
    _empty_video(tmp_path / "empty.mp4")
    write_video(tmp_path / "one_frame.mp4", frames=1)
    records = read_jsonl(_write_records(tmp_path, ["good.mp4", bad, "good.mp4"])).records
    run = lambda: encode_records(records, load_tokenizer(None), image_processor=our_image_processor(),  # noqa: E731
                                 video_processor=our_video_processor(), loss_on="assistant", max_length=256,
                                 overlong="truncate", on_error=on_error, problems=problems)
    problems: list[str] = []
    if on_error == "raise":
        with pytest.raises(DataError, match=rf"data.jsonl:2: video .*{message}"):
            run()
    else:
        samples, stats = run()
        assert len(samples) == 2 and stats.skipped == 1
        assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'data.jsonl'}:2: ")


def test_a_video_on_a_text_only_model_is_refused(tmp_path):
    write_video(tmp_path / "good.mp4")
    records = read_jsonl(_write_records(tmp_path, ["good.mp4"])).records
    with pytest.raises(DataError, match="data.jsonl:1: the record has videos but the spec's model has no vision tower"):
        encode_records(records, load_tokenizer(None), image_processor=None, loss_on="assistant", max_length=256,
                       overlong="truncate")


# --- packing ------------------------------------------------------------------------------------

def test_truncation_keeps_a_video_whole_or_drops_it(media):
    # An answered turn first: cut before the image or video, the sample keeps a target and is not dropped.
    messages = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                *chat({"type": "image", "path": "img.png"}, {"type": "video", "path": "a.mp4"})]
    sample, _ = our_row(messages, media)
    start, end = TOKENS["vision_start"], TOKENS["vision_end"]
    ids = sample.input_ids
    video_start = [i for i, t in enumerate(ids) if t == start][1]  # the image's block is the first
    video_end = max(i for i, t in enumerate(ids) if t == end)
    for budget in range(video_start + 1, video_end + 1):  # the budget ends inside the video: cut before it
        fitted = fit_to_budget(sample, budget, overlong="truncate", vision_start_id=start, vision_end_id=end)
        assert fitted.input_ids == ids[:video_start] and fitted.videos == [] and len(fitted.images) == 1
    fitted = fit_to_budget(sample, video_end + 2, overlong="truncate", vision_start_id=start, vision_end_id=end)
    assert fitted.input_ids == ids[:video_end + 2] and fitted.videos == sample.videos and fitted.video_grids == sample.video_grids


# --- the CLI: done-when 4, and `assemble data` -------------------------------------------------

@pytest.fixture(scope="module")
def video_spec(tmp_path_factory) -> Path:
    """The tiny spec over a few captions and chats with videos, in a temporary folder."""
    folder = tmp_path_factory.mktemp("video_spec")
    (folder / "images").mkdir()
    lines = []
    for index in range(4):
        image = f"images/{index:04d}.png"
        (folder / image).write_bytes((TINY_IMAGES / f"{index:04d}.png").read_bytes())
        lines.append({"messages": chat({"type": "image", "path": image}, answer="A shape.")})
        write_video(folder / f"clip{index}.mp4", seed=index)
        lines.append({"messages": chat({"type": "video", "path": f"clip{index}.mp4"}, answer=f"Noise number {index}.")})
    (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = yaml.safe_load(TINY.read_text())
    spec["data"].update(sources=[{"path": "data.jsonl"}], videos={"min_pixels": 4096, "max_pixels": 65536})
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder / "spec.yaml"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


TRAIN = ["train.steps=2", "train.log_every=1", "train.export_hf=false", "train.schedule.warmup_steps=1", "ops.backend=hf",
         "train.checkpoint.every=0", "train.tokens_per_step=128", "data.packing.length=128"]


@pytest.mark.slow  # a real `assemble train` in a subprocess: its start (imports, the 248k-vocab model) dominates
def test_a_spec_with_videos_trains_through_the_cli(video_spec, tmp_path):
    from assembler import load_spec
    from assembler.data import build_loader

    loader = build_loader(load_spec(video_spec, TRAIN))
    assert any([next(loader)["pixel_values_videos"] is not None for _ in range(2)])  # the run trains on a video
    overrides = [arg for override in TRAIN for arg in ("-o", override)]
    result = _cli("train", str(video_spec), *overrides, "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(np.isfinite(m["loss"]) for m in steps)


def test_assemble_data_counts_videos_per_sample(video_spec, tmp_path):
    result = _cli("data", str(video_spec), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "images per sample: 0 images: 4, 1 image: 4" in result.stdout
    assert "videos per sample: 0 videos: 4, 1 video: 4" in result.stdout


# --- FSDP: every rank runs the vision tower as often -----------------------------------------------

def test_ranks_with_images_or_videos_make_the_same_number_of_vision_calls(monkeypatch):
    """Images and videos are one tower call each; a rank lacking either kind that another rank has
    makes a blank (idle) call in its place, so the vision blocks' collectives match across ranks."""
    from assembler.train import step
    from blocks.packing import PackingContext

    def batch(image: bool, video: bool) -> dict:
        return {"shift_labels": torch.zeros(1, 4, dtype=torch.long), "packing": PackingContext.from_document_lengths([[4]]),
                "pixel_values": torch.zeros(1) if image else None, "pixel_values_videos": torch.zeros(1) if video else None}

    ranks = [[batch(True, False), batch(False, False)], [batch(False, True), batch(False, False)]]
    flags = lambda micro_batches: step._step_totals(micro_batches, torch.device("cpu"), count_mtp_targets=False, world_size=2)  # noqa: E731
    local = []
    monkeypatch.setattr(step, "all_reduce_sum", lambda t: local.append(t) or t)
    for micro_batches in ranks:
        flags(micro_batches)
    summed = local[0] + local[1]  # what the all-reduce of the two ranks gives
    monkeypatch.setattr(step, "all_reduce_sum", lambda t: summed)
    for micro_batches in ranks:
        _, _, calls = flags(micro_batches)
        assert calls == [2, 0]  # any image + any video in micro-batch 0; nothing in micro-batch 1
        assert [c - step._vision_calls(mb) for c, mb in zip(calls, micro_batches)] == [1, 0]  # one idle call each


def test_a_table_row_holds_a_video_part_as_a_jsonl_line_does(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet

    from assembler.data.sources import read_table

    write_video(tmp_path / "clip.mp4")
    def row(video: str) -> dict:  # an Arrow column has one type: every content a list of parts
        user, assistant = chat({"type": "video", "path": video})
        return {"messages": [user, {**assistant, "content": [{"type": "text", "text": assistant["content"]}]}]}

    rows = [row("clip.mp4"), row("gone.mp4")]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "data.parquet")
    with pytest.raises(DataError, match=r"data.parquet:row 2: .*video 'gone.mp4' not found"):
        read_table(tmp_path / "data.parquet")
    records = read_table(tmp_path / "data.parquet", on_error="skip").records
    assert [record.videos for record in records] == [[tmp_path / "clip.mp4"]]
