"""Add Distillery's AVX-512 VNNI q8_0 kernel (distillery-q8_0-x16.inc) to a llama.cpp source tree.

    python scripts/llama-cpp/patch.py <llama.cpp source dir>

scripts/setup.sh runs it on llama-cpp-python's vendored llama.cpp before compiling it. When an anchor line of
repack.cpp is missing it stops and changes nothing; run twice, it changes nothing more.
Design: docs/design/llama-cpp.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL = "distillery-q8_0-x16.inc"
MARK = "// distillery-q8_0-x16"
# (line of repack.cpp, lines to insert before (-1) or after (+1) it)
EDITS = [
    ('#include "repack.h"', +1,
     ["#include <vector>  " + MARK,
      "#if defined(__AVX512F__)",
      "#include <immintrin.h>",
      "#endif"]),
    ("class tensor_traits_base : public ggml::cpu::tensor_traits {", -1,
     [f'#include "{KERNEL}"  {MARK}', ""]),
    ("    static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 4, GGML_TYPE_Q8_0> q8_0_4x8_q8_0;", +1,
     ["#ifdef DISTILLERY_Q8_0_X16  " + MARK,
      "    static const ggml::cpu::repack::tensor_traits<block_q8_0, 8, 16, GGML_TYPE_Q8_0> q8_0_16x4_q8_0;",
      "#endif"]),
    ("    } else if (cur->type == GGML_TYPE_Q8_0) {", +1,
     ["#ifdef DISTILLERY_Q8_0_X16  " + MARK,
      "        if (ggml_cpu_has_avx512_vnni() && cur->ne[1] % 16 == 0) {",
      "            return &q8_0_16x4_q8_0;",
      "        }",
      "#endif"]),
]


def patch(src: Path) -> str:
    cpu = src / "ggml/src/ggml-cpu"
    repack = cpu / "repack.cpp"
    if not repack.is_file():
        raise SystemExit(f"error: {repack} not found: not a llama.cpp source tree")
    text = repack.read_text()
    if MARK in text:
        shutil.copyfile(HERE / KERNEL, cpu / KERNEL)
        return "already patched"
    lines = text.split("\n")
    for anchor, where, new in EDITS:
        hits = [i for i, line in enumerate(lines) if line == anchor]
        if len(hits) != 1:
            raise SystemExit(f"error: {repack}: expected the line {anchor!r} once, found it {len(hits)} times; "
                             "this llama.cpp is not the one scripts/llama-cpp/patch.py was written for")
        at = hits[0] if where < 0 else hits[0] + 1
        lines[at:at] = new
    shutil.copyfile(HERE / KERNEL, cpu / KERNEL)
    repack.write_text("\n".join(lines))
    return "patched"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(f"llama.cpp q8_0 AVX-512 VNNI kernel: {patch(Path(sys.argv[1]))}")
