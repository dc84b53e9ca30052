"""Checks of a base model materialised from a GGUF (`model.source: gguf`) against llama.cpp, before anything trains.

Tokenizer ids, the checkpoint converted back to an f32 GGUF, and the source GGUF's own top-1 agreement: the
base_model stage writes them to metrics/base_model.json and fails when one does not hold. Docs: docs/profiles.md.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from pipeline.export.gguf import CONVERTER, converter_command, converter_version
from pipeline.export.parity import Reference, compare_logits, llama_logits, load_llama, tokenizer_parity

MIN_RECONVERTED_TOP1 = 0.995
MIN_SOURCE_TOP1 = 0.90
TIE_TOLERANCE = 1e-3

# Ours: ~450 tokens of plain prose, English and Chinese, the kinds of text the pipeline trains on.
CHECK_TEXT = """\
Laboratory chemicals are stored by hazard class, not by alphabet. Oxidizers such as potassium \
permanganate and concentrated nitric acid are kept apart from flammable liquids, and acids are \
never shelved above bases. Each container carries its name, the date it was opened and the name \
of the person responsible for it. Flammable solvents stay in a ventilated cabinet, in quantities \
no larger than a week of work needs; the rest waits in the store room.

Hydrogen is the lightest element. Its atomic number is 1 and its symbol is H. It burns in air \
with an almost invisible flame, and a mixture of hydrogen and oxygen explodes when it is lit. \
Helium, the second element, is a noble gas: it forms no compounds under ordinary conditions. \
Iron melts at 1538 degrees Celsius; copper at 1085; aluminium at 660. Water boils at 100 degrees \
at sea level and freezes at 0.

When a spill happens, the first step is to warn the people nearby and keep them away. Small \
spills of acid are neutralised with sodium bicarbonate, then wiped up with absorbent pads that \
go into the labelled waste drum. Large spills, or any spill of a toxic gas, mean leaving the room, \
closing the door and calling the safety officer.

氢是元素周期表中的第一个元素，原子序数为1，符号是H。氦是第二个元素，属于稀有气体。\
铁的熔点是1538摄氏度。实验室的化学品应按危险类别分开存放，氧化剂不能与易燃液体放在一起。\
酸液少量泄漏时，先用碳酸氢钠中和，再用吸附垫擦干净。
"""

CHECK_STRINGS = [
    "Question: What is the symbol of iron?\nA. Fe\nB. Ir\nC. In\nD. I\nAnswer: A",
    "氢的原子序数是多少？答案：1",
    "  leading spaces, a tab\tand digits 3.14159 2026-11-28",
]


def _llama(path: Path, n_ctx: int):
    return load_llama(path, n_ctx, threads=2)


def _top1(agreement: dict) -> float:
    return (agreement["agree"] + agreement["ties"]) / agreement["positions"] if agreement["positions"] else 0.0


def check(hf_dir: Path, source: Path, tokenizer_dir: Path | None = None, text: str = CHECK_TEXT,
          tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """Compare the HF checkpoint `hf_dir` with its source GGUF and with its own f32 reconversion
    on `text`. `tokenizer_dir`: the tokenizer that trains (default: hf_dir's). A position whose two
    best HF logits lie within `tie_tolerance` counts as agreeing whichever of them llama.cpp picks.
    Returns the report, with `failures` (empty when every check holds)."""
    from transformers import AutoTokenizer

    ref = Reference.load(hf_dir)
    if tokenizer_dir is not None:
        ref.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = ref.encode(text)
    n_ctx = len(ids) + 16
    report: dict = {"source_gguf": source.name, "text_tokens": len(ids),
                    "adds_bos": ref.tokenizer.bos_token_id is not None and ids[:1] == [ref.tokenizer.bos_token_id]}
    failures = []

    src = _llama(source, n_ctx)
    parity, problems = tokenizer_parity(ref, src, [text, *CHECK_STRINGS])
    report["tokenizer"] = parity
    failures += [f"tokenizer parity with {source.name}: {p}" for p in problems]
    hf_logits = ref.logits(ids)
    source_cmp = compare_logits(hf_logits, llama_logits(src, ids), tie_tolerance)
    del src
    report["source"] = {**source_cmp, "top1_agreement": round(_top1(source_cmp), 4)}
    if _top1(source_cmp) < MIN_SOURCE_TOP1:
        failures.append(f"source {source.name}: top-1 agreement {_top1(source_cmp):.3f} with the HF model is below "
                        f"{MIN_SOURCE_TOP1} on {len(ids)} positions: the dequantized weights are wrong")

    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "reconverted-f32.gguf"
        proc = subprocess.run([*converter_command(), str(hf_dir), "--outtype", "f32", "--outfile", str(f32)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SystemExit(f"error: {CONVERTER} {converter_version()} failed on {hf_dir} (exit {proc.returncode}):\n{tail}")
        llm = _llama(f32, n_ctx)
        reconverted = compare_logits(hf_logits, llama_logits(llm, ids), tie_tolerance)
        del llm
    report["reconverted_f32"] = {**reconverted, "top1_agreement": round(_top1(reconverted), 4)}
    if _top1(reconverted) < MIN_RECONVERTED_TOP1:
        failures.append(f"reconverted f32 GGUF: top-1 agreement {_top1(reconverted):.4f} with the HF model is below "
                        f"{MIN_RECONVERTED_TOP1} on {len(ids)} positions (max |logit difference| "
                        f"{reconverted['max_abs_diff']:.3g}): the checkpoint does not compute what llama.cpp computes")
    report["failures"] = failures
    report["passed"] = not failures
    return report
