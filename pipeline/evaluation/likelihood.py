"""Multiple-choice accuracy by log-likelihood, as lm-evaluation-harness scores MMLU and C-Eval.

The model is not asked to write an answer: each option is a continuation of the question and the most likely one is
its choice, so a pretrained model that never learned to name an option still gets a real figure. Only the positions
that predict a continuation go through the output layer, and the prompts' shared start is computed once.

Design: docs/design/metrics.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from pipeline.data import chat_format

FRAMINGS = ("plain", "chat", "cloze")
# The framings that list the options in the prompt and score their letters too (cloze lists none).
LISTED = ("plain", "chat")
# The think block a model trained to think first is given before its scored answer.
EMPTY_THINK = f"{chat_format.THINK_OPEN}\n\n{chat_format.THINK_CLOSE}\n"


def plain_question(rec: dict) -> str:
    lines = [f"Question: {rec['question']}", *(f"{k}. {v}" for k, v in rec["options"].items()), "Answer:"]
    return "\n".join(lines)


def plain_context(rec: dict, shots: list[dict]) -> str:
    return "\n\n".join([f"{plain_question(s)} {s['answer']}" for s in shots] + [plain_question(rec)])


def cloze_question(question: str) -> str:
    """OLMES's cloze form: the question alone, the options not listed; each is scored as the
    answer's continuation."""
    return f"Question: {question}\nAnswer:"


def cloze_context(rec: dict, shots: list[dict]) -> str:
    """The cloze prompt, each shot answered by its right option's text."""
    answered = [f"{cloze_question(s['question'])} {s['options'][s['answer']]}" for s in shots]
    return "\n\n".join(answered + [cloze_question(rec["question"])])


def user_turn(rec: dict) -> str:
    return rec["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in rec["options"].items())


def chat_context(tokenizer, rec: dict, shots: list[dict], system_prompt: str, think: bool) -> str:
    lead = EMPTY_THINK if think else ""
    messages = [{"role": "system", "content": system_prompt}]
    for s in shots:
        messages += [{"role": "user", "content": user_turn(s)},
                     {"role": "assistant", "content": f"{lead}{s['answer']}. {s['options'][s['answer']]}"}]
    messages.append({"role": "user", "content": user_turn(rec)})
    return chat_format.render_prompt(tokenizer, messages) + lead


def continuations(rec: dict, framing: str) -> tuple[list[str], list[str]]:
    """The letter continuations and the text continuations of an item, in option order (cloze:
    texts only, its prompt names no letter)."""
    delimiter = "" if framing == "chat" else " "
    letters = [delimiter + k for k in rec["options"]] if framing in LISTED else []
    return letters, [delimiter + v for v in rec["options"].values()]


def pick_shots(train: list[dict], k: int) -> list[dict]:
    """The first k multiple-choice records of the train split by id (their answer an option)."""
    mcq = [r for r in sorted(train, key=lambda r: r["id"]) if r.get("options") and r.get("answer") in r["options"]]
    return mcq[:k]


@dataclass
class Encoded:
    context: list[int]
    continuations: list[list[int]]


def encode_pair(tokenizer, context: str, conts: list[str], add_special_tokens: bool) -> Encoded:
    """lm-evaluation-harness's `_encode_pair`: whitespace at the end of the context moves to the
    continuation; the continuation's tokens are those the whole adds past the context's."""
    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    out = []
    stripped = context.rstrip()
    moved = context[len(stripped):]
    context_ids = enc(stripped)
    for cont in conts:
        whole = enc(stripped + moved + cont)
        ids = whole[len(context_ids):]
        if not ids:
            raise ValueError(f"continuation {cont!r} adds no token to its context")
        out.append(ids)
    return Encoded(context_ids, out)


def output_logprobs(model, hidden):
    """Log-softmax of the output layer on the given hidden states only (the model's final logit
    soft-capping applied, as its forward does): the 262k-row layer never sees the positions
    nobody scores."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common start of all sequences, leaving each at least one token."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


class Scorer:
    """Sums of continuation log-probabilities from a causal LM (transformers, eval mode).

    The shared start of all contexts is run once; then items go through in batches: first their
    own context tokens (right-padded) on copies of the shared cache, which gives the first token
    of every continuation from the last context position; then every multi-token continuation
    of the batch as one more batch on that cache, with explicit position ids (each continuation
    goes on from its own item's last context token) and a mask that hides other items' padding.
    Items are batched in order of length (less padding); continuations of one token (the
    letters) need no second pass. The output layer runs only on the hidden states that predict
    continuation tokens."""

    def __init__(self, model, batch_size: int = 16):
        self.model = model
        self.device = model.device  # the CPU, or the GPU the model was loaded on
        self.batch_size = batch_size
        self.forward_tokens = 0  # tokens that went through the model (the cost)

    def _logprobs(self, hidden):
        # read back once per batch: item by item from a GPU would be one transfer per option
        return output_logprobs(self.model, hidden).cpu()

    def _body(self, ids, cache, mask, positions):
        import torch

        self.forward_tokens += int(sum(len(x) for x in ids))
        out = self.model.model(input_ids=torch.tensor(ids, device=self.device), past_key_values=cache, use_cache=True,
                               attention_mask=mask.to(self.device), position_ids=positions.to(self.device))
        return out.last_hidden_state, out.past_key_values

    def loglikelihoods(self, items: list[Encoded]) -> list[list[float]]:
        """For each item, the log-likelihood of each continuation given the context."""
        import torch

        prefix_len = common_prefix([it.context for it in items])
        prefix_cache = None
        with torch.no_grad():
            if prefix_len:
                prefix = [items[0].context[:prefix_len]]
                _, prefix_cache = self._body(prefix, None, torch.ones(1, prefix_len, dtype=torch.long),
                                             torch.arange(prefix_len)[None])
            # batches of similar lengths pad less: by context length, then longest continuation
            order = sorted(range(len(items)), key=lambda k: (len(items[k].context), max(map(len, items[k].continuations))))
            results: list[list[float]] = [[] for _ in items]
            for start in range(0, len(order), self.batch_size):
                chosen = order[start:start + self.batch_size]
                for k, lls in zip(chosen, self._batch([items[k] for k in chosen], prefix_len, prefix_cache), strict=True):
                    results[k] = lls
        return results

    def _batch(self, batch: list[Encoded], prefix_len: int, prefix_cache) -> list[list[float]]:
        import torch

        tails = [it.context[prefix_len:] for it in batch]
        width = max(map(len, tails))
        cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else None
        if cache is not None:
            cache.batch_repeat_interleave(len(batch))
        mask = torch.zeros(len(batch), prefix_len + width, dtype=torch.long)
        mask[:, :prefix_len] = 1
        for i, t in enumerate(tails):
            mask[i, prefix_len:prefix_len + len(t)] = 1
        positions = (prefix_len + torch.arange(width))[None].expand(len(batch), -1)
        hidden, cache = self._body([t + [t[-1]] * (width - len(t)) for t in tails], cache, mask, positions)
        last = self._logprobs(hidden[torch.arange(len(batch), device=self.device),
                                     torch.tensor([len(t) - 1 for t in tails], device=self.device)])
        lls = [[float(last[i, c[0]]) for c in it.continuations] for i, it in enumerate(batch)]

        # the rest of each continuation longer than one token: one row per (item, continuation), on
        # a copy of its item's cache (single-token continuations, the letters, are done already)
        multi = [(i, j) for i, it in enumerate(batch) for j, c in enumerate(it.continuations) if len(c) > 1]
        if not multi:
            return lls
        span = max(len(batch[i].continuations[j]) for i, j in multi) - 1
        cache.reorder_cache(torch.tensor([i for i, _ in multi], device=self.device))
        rows, row_mask, row_pos, wanted = [], [], [], []
        for r, (i, j) in enumerate(multi):
            c = batch[i].continuations[j]
            rows.append(c[:-1] + [c[0]] * (span - len(c) + 1))
            row_mask.append(mask[i].tolist() + [1] * (len(c) - 1) + [0] * (span - len(c) + 1))
            row_pos.append([prefix_len + len(tails[i]) + k for k in range(span)])
            wanted += [(r, k, i, j, c[k + 1]) for k in range(len(c) - 1)]
        hidden, _ = self._body(rows, cache, torch.tensor(row_mask), torch.tensor(row_pos))
        logp = self._logprobs(hidden[torch.tensor([w[0] for w in wanted], device=self.device),
                                     torch.tensor([w[1] for w in wanted], device=self.device)])
        for (_, _, i, j, token), row in zip(wanted, logp, strict=True):
            lls[i][j] += float(row[token])
        return lls


def choose(lls: list[float], lengths: list[int] | None = None) -> int:
    """The index of the most likely option (the first on a tie, as numpy's argmax); with
    lengths, of the highest log-likelihood per character."""
    scores = [ll / n for ll, n in zip(lls, lengths, strict=True)] if lengths else lls
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def score_items(scorer: Scorer, tokenizer, records: list[dict], framing: str, shots: list[dict], system_prompt: str,
                think: bool, max_len: int) -> tuple[list[dict], int]:
    """Per record: the log-likelihoods of its letters and texts, the letter chosen each way, and
    whether each is right (`correct`: by the letters' log-likelihood, or in cloze, which lists no
    letters, by the texts' own; `correct_norm`: by the texts' per character). Records whose
    context and longest continuation do not fit max_len tokens are left out and counted."""
    encoded, kept = [], []
    for rec in records:
        letters, texts = continuations(rec, framing)
        if framing in ("plain", "cloze"):
            context = plain_context(rec, shots) if framing == "plain" else cloze_context(rec, shots)
            add_special = True  # the tokenizer's own policy, as lm-evaluation-harness encodes
        else:
            context = chat_context(tokenizer, rec, shots, system_prompt, think)
            add_special = False  # the template writes the BOS where the model wants one
        enc = encode_pair(tokenizer, context, letters + texts, add_special)
        if len(enc.context) + max(map(len, enc.continuations)) > max_len:
            continue
        encoded.append(enc)
        kept.append(rec)
    rows = []
    for rec, lls in zip(kept, scorer.loglikelihoods(encoded) if encoded else [], strict=True):
        keys = list(rec["options"])
        letter_ll, text_ll = lls[:-len(keys)], lls[-len(keys):]
        pick = keys[choose(letter_ll or text_ll)]
        pick_norm = keys[choose(text_ll, [len(v) for v in rec["options"].values()])]
        rows.append({"id": rec["id"], "answer": rec["answer"], "letter_ll": letter_ll, "text_ll": text_ll,
                     "choice": pick, "choice_norm": pick_norm, "correct": pick == rec["answer"],
                     "correct_norm": pick_norm == rec["answer"]})
    return rows, len(records) - len(kept)
