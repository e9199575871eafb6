"""Generate camcli/data/colormaps.json: 256-entry "#rrggbb" lookup tables for heatmap overlays.

Run once, by hand (matplotlib is a dev-time tool only; camcli does not depend on it)::

    pip install matplotlib
    python tools/make_colormaps.py

Each colormap is sampled at 256 evenly spaced points x = i/255 (i = 0..255) and each RGB
channel is rounded to uint8. Shipping the tables lets camcli colour heatmaps with plain numpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "camcli" / "data" / "colormaps.json"
NAMES = ("jet", "turbo", "viridis", "inferno", "gray")
N = 256


def sample(name: str) -> list[str]:
    cmap = matplotlib.colormaps[name]
    rgba = cmap(np.linspace(0.0, 1.0, N))  # x = i/255
    rgb = np.clip(np.rint(rgba[:, :3] * 255.0), 0, 255).astype(np.uint8)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]


def main() -> int:
    tables = {name: sample(name) for name in NAMES}
    OUT.write_text(json.dumps(tables, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(tables)} colormaps x {N} entries to {OUT}")
    print(f"(matplotlib {matplotlib.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
