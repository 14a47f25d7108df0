"""Peak memory of decoding a JSON infer body against its size, the reason for max_json_request_bytes.

Builds OIP JSON infer bodies of one tensor (FP32 normal values with six decimals, INT64 below 1000, and
FP32 zeros), decodes each with medserve's REST decoder under ``tracemalloc`` and prints the body size,
the peak of Python allocations while decoding and their ratio, with the same tensor's binary size:

    python benchmarks/json_memory.py [--elements 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import tracemalloc

import numpy as np

from medserve.protocol.rest_codec import decode_infer_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1_000_000, help="tensor elements (1000000)")
    count = parser.parse_args().elements
    rng = np.random.default_rng(0)
    cases = {
        "FP32 normal": ("FP32", [round(float(x), 6) for x in rng.normal(size=count)], 4),
        "INT64 < 1000": ("INT64", [int(x) for x in rng.integers(0, 1000, count)], 8),
        "FP32 zeros": ("FP32", [0.0] * count, 4),
    }
    print(f"load average {os.getloadavg()[0]:.1f}; {count} elements\n")
    print("| tensor | JSON body | binary | decode peak | peak / JSON size |")
    print("|---|---|---|---|---|")
    for name, (datatype, data, width) in cases.items():
        body = json.dumps({"inputs": [{"name": "X", "datatype": datatype, "shape": [count], "data": data}]})
        raw = body.encode()
        del body
        tracemalloc.start()
        decode_infer_request(raw, None, "m", "", 1 << 40)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        mb = 1e6
        print(
            f"| {name} | {len(raw) / mb:.1f} MB | {count * width / mb:.1f} MB | {peak / mb:.0f} MB "
            f"| {peak / len(raw):.1f}x |"
        )


if __name__ == "__main__":
    main()
