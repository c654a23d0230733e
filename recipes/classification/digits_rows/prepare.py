"""Write scikit-learn's bundled 8x8 digits (no download) as sequences of rows for nmt classify.

Each image becomes an 8-step sequence of 8 pixel intensities, one line per image:
``label<TAB>p1,...,p8 p1,...,p8 ...`` under a header ``label<TAB>rows``. The split is fixed
(stratified, seeded): train 1077, dev 270, test 450 images.

    python recipes/classification/digits_rows/prepare.py OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def write(path: Path, images, labels) -> None:
    lines = ["label\trows"]
    for image, label in zip(images, labels):
        rows = image.reshape(8, 8).astype(int)
        lines.append(f"{label}\t" + " ".join(",".join(str(v) for v in row) for row in rows))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(out: Path) -> None:
    digits = load_digits()
    x_rest, x_test, y_rest, y_test = train_test_split(digits.data, digits.target, test_size=450, random_state=0,
                                                      stratify=digits.target)
    x_train, x_dev, y_train, y_dev = train_test_split(x_rest, y_rest, test_size=270, random_state=0, stratify=y_rest)
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", x_train, y_train), ("dev", x_dev, y_dev), ("test", x_test, y_test)):
        write(out / f"{name}.tsv", x, y)
    print(f"wrote {len(y_train)} train, {len(y_dev)} dev, {len(y_test)} test sequences to {out}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/digits_rows_data"))
