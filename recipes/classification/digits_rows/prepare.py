"""Write scikit-learn's bundled 8x8 digits (no download) as sequences of rows for nmt classify.

Each image becomes an 8-step sequence of 8 pixel intensities, one line per image:
``label<TAB>p1,...,p8 p1,...,p8 ...`` under a header ``label<TAB>rows``. The split is fixed
(stratified, seeded): train 1077, dev 270, test 450 images.

    python recipes/classification/digits_rows/prepare.py OUT_DIR

OUT_DIR may be new, or hold files of its own: a train/dev/test.tsv already there is left as it is when it
holds exactly what this script writes, and is refused otherwise (one line, exit 2), so that a user's own
data is never replaced.
"""
from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class Refused(Exception):
    """OUT_DIR cannot take the split: the message is the whole error line."""


def as_tsv(images, labels) -> str:
    lines = ["label\trows"]
    for image, label in zip(images, labels):
        rows = image.reshape(8, 8).astype(int)
        lines.append(f"{label}\t" + " ".join(",".join(str(v) for v in row) for row in rows))
    return "\n".join(lines) + "\n"


def split() -> dict[str, tuple[str, int]]:
    """Each split's file name, its text and its number of images."""
    digits = load_digits()
    x_rest, x_test, y_rest, y_test = train_test_split(digits.data, digits.target, test_size=450, random_state=0,
                                                      stratify=digits.target)
    x_train, x_dev, y_train, y_dev = train_test_split(x_rest, y_rest, test_size=270, random_state=0, stratify=y_rest)
    return {f"{name}.tsv": (as_tsv(x, y), len(y))
            for name, x, y in (("train", x_train, y_train), ("dev", x_dev, y_dev), ("test", x_test, y_test))}


def check_folder(out: Path) -> None:
    """Before the (slower) split: a path that is not a folder is refused at once."""
    if out.exists() and not out.is_dir():
        raise Refused(f"{out}: not a folder (the data folder to write train/dev/test.tsv into)")


def main(out: Path) -> None:
    check_folder(out)
    files = split()
    # A file already there that differs from ours is someone's data (or an edited copy): never replaced.
    # One that matches is ours from an earlier call, so a second run of the recipe reuses the folder.
    for name, (text, _) in files.items():
        path = out / name
        if path.is_dir() or (path.exists() and path.read_bytes() != text.encode("utf-8")):
            raise Refused(f"{path}: exists and is not this script's output; name another folder (DIGITS_DATA "
                          "for run.sh) or remove it")
    out.mkdir(parents=True, exist_ok=True)
    for name, (text, _) in files.items():
        path = out / name
        if not path.exists():  # through a temporary name: a file cut short (full disk) is never taken for ours
            partial = out / f".{name}.partial"
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)
    counts = ", ".join(f"{n} {name.removesuffix('.tsv')}" for name, (_, n) in files.items())
    print(f"{counts} sequences in {out}", file=sys.stderr)


def cli(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("runs/digits_rows_data")
    try:
        main(out)
    except Refused as refused:
        print(f"prepare.py: {refused}", file=sys.stderr)
        return 2
    except OSError as error:  # a parent that is a file, no permission, a full disk: one line, not a traceback
        print(f"prepare.py: {error.filename or out}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
