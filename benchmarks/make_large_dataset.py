"""Generate a large synthetic JSONL set for the data pipeline's scale measurements (issue 16).

    python benchmarks/make_large_dataset.py OUT_DIR [--records 200000] [--image-share 0.2]
    python benchmarks/make_large_dataset.py OUT_DIR --records 4000 --image-share 1 --image-size 448 --caption-words 1800
        # the GPU data-share row: 8k rows of 4 records, each a 448x448 image (196 tokens) and ~1,800 text tokens
    python benchmarks/make_large_dataset.py OUT_DIR --records 20000 --image-share 0.1 --image-size 448 --median-words 500
    python benchmarks/make_large_dataset.py OUT_DIR --records 64 --image-share 0 --words 70000
        # long-context rows: every record one document of ~70k words (truncated to the row)
        # the realistic training set (issue 22): log-normal chat lengths around 500 words (the bench's
        # packed rows: median 1/16 of an 8k row, sigma 0.8), one in ten around a 448x448 image

OUT_DIR/records.jsonl holds `--records` chats, deterministic for a given count: a share
`--image-share` are captions of one of the tiny set's 64x64 PNGs (copied into OUT_DIR/images, so
each image record points at a real file), or with `--image-size N` of one of 16 random N×N PNGs
written there, with `--caption-words` words of text around the image; the rest text chats of
10–400 random words. With `--median-words N` every record's words (user and assistant, the image
records' too) are drawn log-normal around N instead, with the spread of `assemble bench`'s packed
rows (assembler/bench/workload.py), so a training run on the set and the bench's packed row see
documents of one length mix. The words
come from a fixed list, so the token-length distribution is realistic in spread, not in content.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from assembler.bench.workload import DOCUMENT_LENGTH_SIGMA  # noqa: E402 (the bench's spread, one source)

MIN_WORDS = 8
TINY_IMAGES = ROOT / "specs" / "data" / "tiny" / "images"
WORDS = ("the model reads every token of a long document and learns to predict the next one from what came before "
         "packing keeps rows full attention stays inside each document while the optimizer steps").split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--image-share", type=float, default=0.2)
    parser.add_argument("--image-size", type=int, default=None, help="random N×N PNGs instead of the tiny set's 64×64")
    parser.add_argument("--caption-words", type=int, default=0, help="words of text beside each image (the user's turn)")
    parser.add_argument("--median-words", type=int, default=None,
                        help="log-normal record lengths around this many words (the bench's length spread)")
    parser.add_argument("--words", type=int, default=None,
                        help="every record exactly this many words (long-context rows: one document each)")
    args = parser.parse_args()
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    if args.image_size is None:
        names = sorted(p.name for p in TINY_IMAGES.glob("*.png"))
        for name in names:
            shutil.copy(TINY_IMAGES / name, images / name)
    else:
        import numpy as np
        from PIL import Image

        noise = np.random.default_rng(0)
        names = [f"random_{i:02d}.png" for i in range(16)]
        for name in names:
            pixels = noise.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / name)
    rng = random.Random(0)
    original_mix = args.words is None and args.median_words is None  # 10-400-word chats, short captions
    with (args.out / "records.jsonl").open("w") as out:
        for _ in range(args.records):
            if args.words is not None or args.median_words is not None:  # a third of the words the answer's, as chats are
                words = args.words or max(MIN_WORDS, int(rng.lognormvariate(math.log(args.median_words), DOCUMENT_LENGTH_SIGMA)))
                user_words, answer_words = words - words // 3, words // 3
            if rng.random() < args.image_share:
                caption = args.caption_words if original_mix else user_words
                text = " ".join(["Describe the image."] + rng.choices(WORDS, k=caption))
                user = [{"type": "image", "path": f"images/{rng.choice(names)}"}, {"type": "text", "text": text}]
                answer = " ".join(rng.choices(WORDS, k=rng.randint(3, 12) if original_mix else answer_words))
            elif not original_mix:
                user, answer = " ".join(rng.choices(WORDS, k=user_words)), " ".join(rng.choices(WORDS, k=answer_words))
            else:
                user = " ".join(rng.choices(WORDS, k=rng.randint(10, 400)))
                answer = " ".join(rng.choices(WORDS, k=rng.randint(5, 100)))
            record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
            out.write(json.dumps(record) + "\n")
    print(f"wrote {args.records} records to {args.out / 'records.jsonl'}")


if __name__ == "__main__":
    main()
