"""Stage evaluate: base vs tuned on the held-out test split, and on external exam sets; every
rate with its count and a 95% interval, and tuned vs base compared on the same items.

Knowledge, by log-likelihood (pipeline.evaluation.likelihood, as lm-evaluation-harness scores MMLU):
multiple-choice accuracy on the test split's multiple-choice questions and on every exam set,
option letters (`acc`) and length-normalised option texts (`acc_norm`), plain-text and
chat-template framings, zero-shot and eval.mc.shots-shot. The base model gets a real figure.

Behaviour and answers, by generation through pipeline.generation.engines (eval.backend `vllm`: one engine
serves the base model and, through a LoRARequest, base + adapter; an adapter with trained token
rows, which vLLM cannot apply as a LoRA module, is merged into a temporary copy served by a
second engine; `transformers`: generate, the adapter merged onto the full-precision base), the
same prompts and sampling (greedy by default) for both:

- questions: the test split's crawled questions (system + question, as in training);
- tools: the test split's search conversations from synth, the search tool declared: the first
  turn is scored for tool-call validity, the call / no-call decision against the label and
  BFCL-style argument match (pipeline.evaluation.scoring); then the conversation runs to its end: each
  search call runs on the real index (data/search/index.sqlite), the result goes back as the
  tool's turn, up to eval.max_tool_rounds times, and the final answer is scored;
- exam:<name>: each file in eval.exam_sets and eval.general_sets, answered in words (generation accuracy, the option
  named in the answer; kept beside the log-likelihood figure, named as such).

On every prompt set: think rate (one well-formed think block first), stop rate, and free-form
answers against the reference answer (normalised exact match, contains-reference, token F1;
CJK by character). Held-out loss and perplexity come from a forward pass over the test
questions' reference answers (the tokens train learns). A prompt that does not fit
eval.max_model_len with max_new_tokens is skipped and counted, not cut.

Intervals: Wilson's for each rate; tuned vs base on the same items with Newcombe's interval
for the paired difference and McNemar's exact test (pipeline.evaluation.stats), under `comparison`.

Writes metrics/eval.json (shown by `dvc exp show`), reports/eval/predictions.jsonl (one
generation a line: id, set, model, output, parsed fields, the search rounds, scores, the
source's URL), reports/eval/mc.jsonl (one log-likelihood item a line: its options'
log-likelihoods and the choices) and reports/eval/plots/decisions_{base,tuned}.csv (label vs
decision, for `dvc plots`).

    python -m pipeline.stages.evaluate       # reads params.yaml (dvc repro evaluate)
"""

from __future__ import annotations

from pipeline.config import Device, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.eval import EvalConfig
from pipeline.config.search import SearchConfig
from pipeline.config.train import TrainConfig
from pipeline.evaluation import stats
from pipeline.evaluation.harness import evaluate, write_outputs
from pipeline.runtime.device import require as require_device


def main() -> None:
    params = sections_or_exit(seed=int, device=Device, chat=ChatConfig, search=SearchConfig, train=TrainConfig, eval=EvalConfig)
    metrics, rows, mc_rows, know_rows = evaluate(params, require_device(params.device, "evaluate"))
    write_outputs(metrics, rows, mc_rows, know_rows)
    b, t = metrics["base"], metrics["tuned"]

    mc_line = "; ".join(
        f"{name} {stats.pct(b['mc'][name]['plain']['0shot']['acc'])} -> {stats.pct(t['mc'][name]['plain']['0shot']['acc'])}"
        for name in sorted(b["mc"]) if "plain" in b["mc"][name])
    print(f"evaluate ({metrics['backend']}): held-out loss base {b['loss']:.4f} -> tuned {t['loss']:.4f}; "
          f"multiple choice (log-likelihood, plain, 0-shot): {mc_line or 'n/a'}; "
          f"think {stats.pct(b['think']['rate'])} -> {stats.pct(t['think']['rate'])}; tool-call validity "
          f"{stats.pct(b['tools']['validity'])} -> {stats.pct(t['tools']['validity'])}; search decisions "
          f"{stats.pct(b['tools']['decision_accuracy'])} -> {stats.pct(t['tools']['decision_accuracy'])}; search answers "
          f"{stats.pct(b['search_answer']['accuracy'])} -> {stats.pct(t['search_answer']['accuracy'])}; "
          f"skipped (too long) {metrics['skipped_too_long']}")
    for name, comparison in sorted(metrics["comparison"].items()):
        if comparison["significant"]:
            print("  " + stats.describe(name, comparison))


if __name__ == "__main__":
    main()
