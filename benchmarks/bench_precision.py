"""Is a reduced ``--precision`` faster than float32 on this machine? The evidence behind the
warning camcli prints (:func:`camcli.precision.slow_reason`).

    .venv/bin/python benchmarks/bench_precision.py                  # resnet50, batch 8
    .venv/bin/python benchmarks/bench_precision.py --model mobilenet_v2 --rounds 3

For each precision (float32, bfloat16, float16) it builds the registry model under camcli's
Keras policy (``weights=None``: speed does not depend on the weights' values) and times its
compiled forward pass for ``--seconds`` on the same batch; the precisions take turns for
``--rounds`` rounds, so load from other processes falls on all of them alike. It prints the
CPU's reduced-precision flags, each precision's images/s per round, its best rate as a ratio to
float32's best, and what camcli says about it here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from camcli.tfimport import import_quietly

    tf = import_quietly()
    import keras

    from camcli import precision, registry

    flags = precision.cpu_flags()
    gpus = len(tf.config.list_physical_devices("GPU"))
    native = sorted(set().union(*(f for f, _ in precision.NATIVE_CPU_FLAGS.values())) & flags)
    print(f"camcli precision benchmark: {args.model}, batch {args.batch_size}; "
          f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, {gpus} GPUs; "
          f"CPU flags "
          f"{' '.join(sorted(f for f in flags if f.startswith(('avx', 'amx'))))}")
    print(f"reduced-precision flags: {', '.join(native) or 'none'}")
    spec = registry.get_spec(args.model)
    height, width = spec.input_size[:2]
    batch = np.random.default_rng(0).random((args.batch_size, height, width, 3), np.float32)
    forwards = {}
    for name in precision.PRECISIONS:
        keras.mixed_precision.set_global_policy(precision.POLICIES[name])
        model = spec.build(weights=None)
        forwards[name] = tf.function(lambda x, m=model: m(x, training=False))
        forwards[name](batch)  # trace and warm up
    keras.mixed_precision.set_global_policy("float32")
    rates: dict[str, list[float]] = {name: [] for name in forwards}
    for _ in range(args.rounds):
        for name, forward in forwards.items():
            start, images = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                forward(batch).numpy()
                images += args.batch_size
            rates[name].append(images / (time.perf_counter() - start))
    base = max(rates["float32"])
    print("\n| precision | images/s per round | best / float32 best | camcli says here |")
    print("| --- | --- | --- | --- |")
    for name, measured in rates.items():
        said = precision.slow_reason(name, flags, gpus) or "nothing (fast)"
        rounds = ", ".join(f"{r:.1f}" for r in measured)
        print(f"| {name} | {rounds} | {max(measured) / base:.2f} | {said} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
