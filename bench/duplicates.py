"""Near-duplicate benchmark: how far apart copies and distinct images are, by the two measures
the scan uses (``imgcls_utils.data.duplicates``), measured in this run:

- the 256-bit perceptual hash (bits apart; ``data.near_duplicate_distance``, 16 by default);
- for small images, the mean absolute difference of the 8 x 8 averages (gray levels of 255;
  ``SMALL_IMAGE_DIFFERENCE``).

Copies: every 8x8 digit of scikit-learn enlarged (nearest neighbour) to 16-128 px as PNG and
JPEG; generated photos resized to half to twice their size as JPEG; Fashion-MNIST test images
enlarged to 56-100 px. Distinct: all pairs of different digits, of different photos, and 3,000
Fashion-MNIST test images (the Debian package dataset-fashion-mnist; skipped without it).

    .venv/bin/python bench/duplicates.py        # about 1 minute
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config  # noqa: E402
from imgcls_utils.data import duplicates  # noqa: E402
from imgcls_utils.data.images import decode_thumbnail  # noqa: E402
from imgcls_utils.data.scan import HASH_THUMBNAIL_SIDE  # noqa: E402
from tests.sample_files import photo  # noqa: E402

FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
DEFAULT_DISTANCE = load_config(REPO / CONFIG_RELATIVE_PATH).data.near_duplicate_distance


def measures(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(hash bits, 8 x 8 average) of an image, computed as the scan computes them."""
    thumbnail = decode_thumbnail(image, HASH_THUMBNAIL_SIDE)
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(duplicates.perceptual_hash(thumbnail)),
                                       np.uint8))
    average = np.frombuffer(bytes.fromhex(duplicates.small_average(thumbnail)), np.uint8)
    return bits, average.astype(np.float64)


def encoded(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return Image.open(io.BytesIO(buffer.getvalue()))


def copy_distances(originals: list[Image.Image], make_copies) -> tuple[list[int], list[float]]:
    """For each original, the largest distance to one of its copies, by each measure."""
    bits, differences = [], []
    for original in originals:
        reference = measures(original)
        copies = [measures(copy) for copy in make_copies(original)]
        bits.append(max(int((reference[0] != c[0]).sum()) for c in copies))
        differences.append(max(float(np.abs(reference[1] - c[1]).mean()) for c in copies))
    return bits, differences


def distinct_distances(images: list[Image.Image], labels: np.ndarray):
    """Distances of all pairs of different images: (bits, differences, same-class mask)."""
    bits, averages = map(np.stack, zip(*(measures(image) for image in images)))
    upper = np.triu_indices(len(images), 1)
    pair_bits = np.concatenate([(bits[i] != bits[upper[1][upper[0] == i]]).sum(axis=1)
                                for i in range(len(images))])
    pair_differences = np.concatenate([np.abs(averages[i] - averages[upper[1][upper[0] == i]])
                                       .mean(axis=1) for i in range(len(images))])
    return pair_bits, pair_differences, labels[upper[0]] == labels[upper[1]]


def enlarged(sides):
    return lambda image: [encoded(image.resize((side, side), Image.Resampling.NEAREST), fmt)
                          for side in sides for fmt in ("PNG", "JPEG")]


def resized(image: Image.Image) -> list[Image.Image]:
    sizes = [(round(image.width * scale), round(image.height * scale))
             for scale in (0.5, 0.75, 1.5, 2)]
    return [encoded(image.resize(size, Image.Resampling.LANCZOS), "JPEG") for size in sizes]


def row(name: str, copies, distinct) -> str:
    bits, differences = copies
    pair_bits, pair_differences, same = distinct

    def smallest(values: np.ndarray, digits: int = 0) -> str:
        return f"{values.min():.{digits}f}" if len(values) else "-"

    cells = [f"{max(bits)}", smallest(pair_bits[same]), smallest(pair_bits[~same]),
             f"{max(differences):.1f}", smallest(pair_differences[same], 1),
             smallest(pair_differences[~same], 1)]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    digit_images = [Image.fromarray(np.round(x * 255 / 16).astype(np.uint8)) for x in digits.images]
    photos = [photo(seed) for seed in range(150)]  # each its own class
    print("| images | copies: bits, largest | distinct same class: bits, smallest | "
          "distinct other class: bits, smallest | copies: 8x8 difference, largest | "
          "distinct same class: difference, smallest | distinct other class: difference, "
          "smallest |\n|---|---|---|---|---|---|---|")
    digit_pairs = distinct_distances(digit_images, digits.target)
    print(row("digits 8x8, enlarged to 16-128 px (PNG, JPEG)",
              copy_distances(digit_images[::6], enlarged((16, 40, 55, 80, 128))), digit_pairs),
          flush=True)
    print(row("photos 96x72, resized x0.5-x2 (JPEG)", copy_distances(photos, resized),
              distinct_distances(photos, np.arange(len(photos)))), flush=True)
    if FASHION_TEST.is_file():
        with gzip.open(FASHION_TEST) as handle:
            pixels = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_TEST.with_name("t10k-labels-idx1-ubyte.gz")) as handle:
            labels = np.frombuffer(handle.read(), np.uint8, offset=8)
        fashion = [Image.fromarray(image) for image in pixels[:3000]]
        print(row("Fashion-MNIST 28x28, enlarged to 56-100 px (PNG, JPEG)",
                  copy_distances(fashion[::30], enlarged((56, 84, 100))),
                  distinct_distances(fashion, labels[:3000])))
    print(f"\nthresholds: {duplicates.SMALL_IMAGE_DIFFERENCE} gray levels for images under "
          f"{duplicates.SMALL_SIDE} px; the config's near_duplicate_distance bits otherwise")
    bits, differences, _ = digit_pairs
    print(f"pairs of distinct digits (of {len(bits):,}) within them: "
          f"{int((differences <= duplicates.SMALL_IMAGE_DIFFERENCE).sum())} by the 8x8 averages, "
          f"{int((bits <= DEFAULT_DISTANCE).sum())} by the hash at {DEFAULT_DISTANCE} bits")


if __name__ == "__main__":
    main()
