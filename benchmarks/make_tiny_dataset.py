"""Generate the tiny synthetic dataset shipped in specs/data/tiny (deterministic: same files every run).

    python benchmarks/make_tiny_dataset.py [--out specs/data/tiny]

captions.jsonl: one coloured shape (circle / square / triangle) per 64x64 PNG (4 merged image
tokens for the tiny spec's 16-pixel patches) on a white or light grey background, with a little
jitter in size and position. The variation is kept mild on purpose. Measured on a GPU with the
tiny spec's model and optimiser (loss of the shape token, true image vs another class's image):
with more variation (18-26 px, ±5 px, three backgrounds) 1.48 vs 1.52 after 120 steps, i.e. the
shapes not yet learned; with this set 1.34 vs 1.68 after 120 steps and 0.05 vs 3.7 after 240. Every sample has the same prompt, "Describe
the image.", and the answer names colour and shape ("A red circle."), so the answer is
predictable only from the image: after training, caption loss with the true image must be lower
than with another sample's image.

chats.jsonl: a dozen short text-only chats (some multi-turn, one with a system prompt) and a few
plain {"text": ...} records, so both record layouts and the text-only path are exercised.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((255, 255, 255), (235, 235, 235))
SAMPLES_PER_CLASS = 16  # 6 colours x 3 shapes x 16 = 288 caption samples
PROMPT = "Describe the image."

CHATS = [
    [("user", "What colour do you get by mixing blue and yellow?"), ("assistant", "Green.")],
    [("user", "How many sides does a triangle have?"), ("assistant", "Three.")],
    [("user", "How many sides does a square have?"), ("assistant", "Four, all of the same length.")],
    [("user", "Is a circle a polygon?"), ("assistant", "No. A circle has no straight sides, so it is not a polygon.")],
    [("user", "Name the three primary colours of light."), ("assistant", "Red, green and blue.")],
    [("user", "What is 2 + 3?"), ("assistant", "5.")],
    [("system", "You are a concise assistant."), ("user", "What shape is a stop sign?"), ("assistant", "An octagon.")],
    [("user", "Hello!"), ("assistant", "Hello! How can I help you today?")],
    [
        ("user", "What colour is the sky on a clear day?"),
        ("assistant", "Blue."),
        ("user", "And at sunset?"),
        ("assistant", "Often orange, red or purple."),
    ],
    [
        ("user", "Give me a shape with three corners."),
        ("assistant", "A triangle."),
        ("user", "And one with none?"),
        ("assistant", "A circle."),
    ],
    [("user", "What do you call a rectangle with four equal sides?"), ("assistant", "A square.")],
    [("user", "Which colour is between red and yellow?"), ("assistant", "Orange.")],
]
TEXTS = [
    "A circle is the set of points at the same distance from a centre.",
    "A square has four equal sides and four right angles.",
    "A triangle has three sides, and its angles add up to 180 degrees.",
    "Red, yellow and blue are the traditional primary colours of paint.",
]


def draw_shape(shape: str, colour: tuple[int, int, int], background: tuple[int, int, int], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    half = rng.randint(20, 24)  # half the shape's extent
    cx = IMAGE_SIZE // 2 + rng.randint(-3, 3)
    cy = IMAGE_SIZE // 2 + rng.randint(-3, 3)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    return image


def caption_records(out: Path, rng: random.Random) -> list[dict]:
    classes = [(colour, shape) for colour in COLOURS for shape in SHAPES] * SAMPLES_PER_CLASS
    rng.shuffle(classes)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index, (colour, shape) in enumerate(classes):
        name = f"images/{index:04d}.png"
        draw_shape(shape, COLOURS[colour], rng.choice(BACKGROUNDS), rng).save(out / name, optimize=True)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "path": name}, {"type": "text", "text": PROMPT}]},
                    {"role": "assistant", "content": f"A {colour} {shape}."},
                ]
            }
        )
    return records


def chat_records() -> list[dict]:
    records = [{"messages": [{"role": role, "content": text} for role, text in chat]} for chat in CHATS]
    return records + [{"text": text} for text in TEXTS]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "specs" / "data" / "tiny")
    args = parser.parse_args()
    rng = random.Random(0)
    write_jsonl(args.out / "captions.jsonl", caption_records(args.out, rng))
    write_jsonl(args.out / "chats.jsonl", chat_records())
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out}: {len(list((args.out / 'images').glob('*.png')))} images, {total / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
