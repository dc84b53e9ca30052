"""Multiple-choice scoring by log-likelihood (pipeline.evaluation.likelihood): hand-computed cases, the
batched scorer against a plain full forward pass, a fixture model trained to prefer the right
option (scored against the true key and a shifted one), and lm-evaluation-harness's own numbers
on a fixture."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.evaluation import likelihood

pytestmark = pytest.mark.filterwarnings("ignore")

SYSTEM = "You are a careful domain expert."
# Question, options, answer: short, varied, the answers spread over the letters.
ITEMS = [
    ("Which planet is known as the red planet?", ["Venus", "Mars", "Jupiter", "Saturn"], "B"),
    ("How many legs does a spider have?", ["Eight", "Six", "Ten", "Four"], "A"),
    ("Which ocean is the largest?", ["Atlantic", "Indian", "Arctic", "Pacific"], "D"),
    ("What colour do blue and yellow make?", ["Purple", "Orange", "Green", "Brown"], "C"),
    ("Who wrote Hamlet?", ["Dickens", "Shakespeare", "Austen", "Tolstoy"], "B"),
    ("How many days are in a leap year?", ["365", "364", "366", "360"], "C"),
    ("Which animal is the largest mammal?", ["Blue whale", "Elephant", "Giraffe", "Hippo"], "A"),
    ("What is the capital of Japan?", ["Osaka", "Kyoto", "Nagoya", "Tokyo"], "D"),
]
SHOTS = [
    ("Which gas do plants take in?", ["Carbon dioxide", "Helium", "Neon", "Argon"], "A"),
    ("How many sides has a hexagon?", ["Five", "Six", "Seven", "Eight"], "B"),
]


def record(i: int, item: tuple, prefix: str = "q") -> dict:
    question, options, answer = item
    return {"id": f"{prefix}{i:02d}", "question": question, "options": dict(zip("ABCD", options, strict=True)),
            "answer": answer, "explanation": ""}


RECORDS = [record(i, it) for i, it in enumerate(ITEMS)]
SHOT_RECORDS = [record(i, it, "s") for i, it in enumerate(SHOTS)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import LlamaTokenizer

    from pipeline.models.base import configure_tokenizer, train_sentencepiece

    out = tmp_path_factory.mktemp("mc-tok")
    lines = [SYSTEM, "system user assistant tool", "Question: Answer:"]
    for rec in RECORDS + SHOT_RECORDS:
        lines += [rec["question"], *rec["options"].values(), *rec["options"]]
    train_sentencepiece(lines * 4, 600, out)
    return configure_tokenizer(LlamaTokenizer.from_pretrained(out, add_bos_token=False))


def tiny_model(tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def trained_to_pick(tokenizer, pick, seed: int = 0, steps: int = 150):
    """A tiny model trained on each item's plain, chat and cloze contexts (zero-shot and with the
    shots) followed by the option `pick(rec)` names, letter and text (cloze: text): it learns to
    prefer that option."""
    import torch

    model = tiny_model(tokenizer, seed)
    texts = []
    for rec in RECORDS:
        key = pick(rec)
        for shots in ([], SHOT_RECORDS):
            texts.append(likelihood.plain_context(rec, shots) + f" {key}")
            texts.append(likelihood.plain_context(rec, shots) + f" {rec['options'][key]}")
            chat = likelihood.chat_context(tokenizer, rec, shots, SYSTEM, True)
            texts += [chat + key, chat + rec["options"][key]]
            texts.append(likelihood.cloze_context(rec, shots) + f" {rec['options'][key]}")
    batch = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    width = max(map(len, batch))
    ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
    labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
    mask = (labels != -100).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    return model.eval()


def scores(model, tokenizer, framing: str, shots: list[dict], records: list[dict] = RECORDS) -> list[dict]:
    rows, skipped = likelihood.score_items(likelihood.Scorer(model, 16), tokenizer, records, framing, shots,
                                           SYSTEM, True, 1024)
    assert skipped == 0
    return rows


# --- hand-computed -----------------------------------------------------------------------

def test_choice_by_log_likelihood_and_by_length_normalised_log_likelihood():
    lls = [-3.0, -2.0, -6.0, -2.0]
    assert likelihood.choose(lls) == 1                     # the first of equal maxima, as numpy's argmax
    # per character: -3/1, -2/4, -6/12, -2/2 -> the second and third tie at -0.5; the first wins
    assert likelihood.choose(lls, [1, 4, 12, 2]) == 1
    assert likelihood.choose([-10.0, -9.0], [10, 3]) == 0  # -1.0 beats -3.0


def test_prompts_shots_and_token_split_as_the_harness_builds_them(tokenizer):
    rec = RECORDS[0]
    assert likelihood.plain_question(rec) == ("Question: Which planet is known as the red planet?\n"
                                              "A. Venus\nB. Mars\nC. Jupiter\nD. Saturn\nAnswer:")
    two = likelihood.plain_context(rec, SHOT_RECORDS)
    assert two.count("\n\n") == 2 and two.startswith("Question: Which gas") and "Answer: A\n\nQuestion: How many sides" in two
    assert likelihood.continuations(rec, "plain") == ([" A", " B", " C", " D"], [" Venus", " Mars", " Jupiter", " Saturn"])
    assert likelihood.continuations(rec, "chat") == (["A", "B", "C", "D"], ["Venus", "Mars", "Jupiter", "Saturn"])
    # cloze (OLMES): the question alone, no letters; a shot is answered by its right option's text
    assert likelihood.continuations(rec, "cloze") == ([], [" Venus", " Mars", " Jupiter", " Saturn"])
    assert likelihood.cloze_context(rec, SHOT_RECORDS) == (
        "Question: Which gas do plants take in?\nAnswer: Carbon dioxide\n\n"
        "Question: How many sides has a hexagon?\nAnswer: Six\n\n"
        "Question: Which planet is known as the red planet?\nAnswer:")
    chat = likelihood.chat_context(tokenizer, rec, SHOT_RECORDS[:1], SYSTEM, True)
    assert chat.endswith("<|im_start|>assistant\n" + likelihood.EMPTY_THINK)
    assert "<|im_start|>assistant\n" + likelihood.EMPTY_THINK + "A. Carbon dioxide<|im_end|>" in chat
    # whitespace at the end of the context goes with the continuation (lm-evaluation-harness's _encode_pair)
    enc = likelihood.encode_pair(tokenizer, "Answer: ", ["B"], True)
    whole = tokenizer("Answer: B")["input_ids"]
    assert enc.context == tokenizer("Answer:")["input_ids"] and enc.context + enc.continuations[0] == whole
    assert likelihood.common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert likelihood.common_prefix([[1, 2], [1, 2]]) == 1  # each keeps a token of its own
    assert [r["id"] for r in likelihood.pick_shots(
        [SHOT_RECORDS[1], {"id": "a", "options": {}, "answer": "x"}, SHOT_RECORDS[0]], 5)] == ["s00", "s01"]


def test_batched_scorer_equals_a_full_forward_pass(tokenizer):
    """Shared prefix, batches with padding, continuations of different lengths: the same
    log-likelihoods as scoring each continuation with one plain forward pass."""
    import torch

    model = tiny_model(tokenizer, seed=3)
    for framing, shots in (("plain", SHOT_RECORDS), ("chat", SHOT_RECORDS[:1]), ("plain", [])):
        encoded = []
        for rec in RECORDS:
            letters, texts = likelihood.continuations(rec, framing)
            context = (likelihood.plain_context(rec, shots) if framing == "plain"
                       else likelihood.chat_context(tokenizer, rec, shots, SYSTEM, True))
            encoded.append(likelihood.encode_pair(tokenizer, context, letters + texts, framing == "plain"))
        got = likelihood.Scorer(model, batch_size=3).loglikelihoods(encoded)
        for enc, lls in zip(encoded, got, strict=True):
            for cont, ll in zip(enc.continuations, lls, strict=True):
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([enc.context + cont])).logits[0], -1)
                want = sum(float(logp[len(enc.context) - 1 + j, t]) for j, t in enumerate(cont))
                assert ll == pytest.approx(want, abs=1e-4)


# --- fixture models -------------------------------------------------------------------------

def test_a_model_trained_on_the_answers_scores_100_and_against_a_shifted_key_0(tokenizer):
    """A model trained to prefer each item's right option scores 100%, letters and texts, in every
    framing and shot count; held to an answer key shifted by one letter (so the option it
    prefers is a wrong one for every item), the same log-likelihoods score 0%. One fixture
    model serves both sides (a second one trained on the wrong options cost half a minute)."""
    right = trained_to_pick(tokenizer, lambda r: r["answer"])
    keys = "ABCD"
    shifted = [{**r, "answer": keys[(keys.index(r["answer"]) + 1) % 4]} for r in RECORDS]
    for framing, shots in (("plain", []), ("plain", SHOT_RECORDS), ("chat", []), ("chat", SHOT_RECORDS),
                           ("cloze", []), ("cloze", SHOT_RECORDS)):
        good = scores(right, tokenizer, framing, shots)
        assert all(r["correct"] and r["correct_norm"] for r in good), (framing, len(shots))
        bad = scores(right, tokenizer, framing, shots, shifted)
        assert [(r["letter_ll"], r["text_ll"]) for r in bad] == [(r["letter_ll"], r["text_ll"]) for r in good]
        assert not any(r["correct"] or r["correct_norm"] for r in bad), (framing, len(shots))


def test_listed_framings_score_the_first_max_listed_items_and_cloze_scores_all(tokenizer):
    """eval.mc.max_listed_items caps the framings that list the options (plain, chat) to the first
    N items of a set, zero-shot and k-shot; cloze scores every item whatever the cap."""
    from types import SimpleNamespace

    from pipeline.config import Sections
    from pipeline.config.eval import McConfig
    from pipeline.evaluation import harness

    params = Sections(eval=SimpleNamespace(mc=McConfig(shots=1, framings=["cloze", "plain", "chat"], max_listed_items=3),
                                           max_model_len=1024),
                      chat=SimpleNamespace(system_prompt=SYSTEM, think_from_explanation=False))
    metrics, rows = harness.mc_run(tiny_model(tokenizer, 0), tokenizer, params, {"set": RECORDS}, SHOT_RECORDS, "base")
    for framing, want in (("cloze", [r["id"] for r in RECORDS]), ("plain", ["q00", "q01", "q02"]),
                          ("chat", ["q00", "q01", "q02"])):
        for k in (0, 1):
            assert metrics["set"][framing][f"{k}shot"]["n"] == len(want), (framing, k)
            assert [r["id"] for r in rows if r["framing"] == framing and r["shots"] == k] == want, (framing, k)


def test_lm_evaluation_harness_gives_the_same_numbers(tokenizer, tmp_path, monkeypatch):
    """lm-evaluation-harness 0.4.13 (HF model, local task YAMLs, first_n shots from a train file)
    on a fixture model: the same per-option log-likelihoods, acc and acc_norm."""
    import yaml

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    model = tiny_model(tokenizer, seed=1)  # random weights: some options right, some wrong, no ties
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    def write(name, recs):
        with (tmp_path / name).open("w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps({"question": r["question"], **r["options"], "answer": r["answer"]}) + "\n")

    write("test.jsonl", RECORDS)
    write("train.jsonl", likelihood.pick_shots(SHOT_RECORDS, 2))
    common = {
        "dataset_path": "json", "test_split": "test", "fewshot_split": "train", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(tmp_path / "test.jsonl"), "train": str(tmp_path / "train.jsonl")}},
        "doc_to_text": "Question: {{question}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}", "target_delimiter": " ", "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    tasks = {"mc_letters": {**common, "doc_to_choice": ["A", "B", "C", "D"], "fewshot_config": {"sampler": "first_n"}},
             "mc_texts": {**common, "doc_to_choice": "{{[A, B, C, D]}}",
                          "fewshot_config": {"sampler": "first_n", "doc_to_target": "answer"}},
             # cloze: the question alone, the options' texts scored; a shot answered by its option's text
             "mc_cloze": {**common, "doc_to_text": "Question: {{question}}\nAnswer:",
                          "doc_to_choice": "{{[A, B, C, D]}}",
                          "fewshot_config": {"sampler": "first_n",
                                             "doc_to_target": "{{[A, B, C, D][['A', 'B', 'C', 'D'].index(answer)]}}"}}}
    for name, task in tasks.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **task}))
    manager = TaskManager(include_path=str(tmp_path))
    accuracies = []
    for k in (0, 2):
        out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tmp_path / "model"), "dtype": "float32"},
                                      tasks=list(tasks), num_fewshot=k, batch_size=4, device="cpu", task_manager=manager,
                                      log_samples=True, bootstrap_iters=0)
        listed = scores(model, tokenizer, "plain", SHOT_RECORDS[:k])
        cloze = scores(model, tokenizer, "cloze", SHOT_RECORDS[:k])
        for name, key, figure in (("mc_letters", "letter_ll", "acc"), ("mc_texts", "text_ll", "acc_norm"),
                                  ("mc_cloze", "text_ll", "acc"), ("mc_cloze", "text_ll", "acc_norm")):
            ours = cloze if name == "mc_cloze" else listed
            samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
            theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
            assert [r[key] for r in ours] == [pytest.approx(t, abs=1e-4) for t in theirs], (name, k)
            mine = sum(r["correct" if figure == "acc" else "correct_norm"] for r in ours) / len(ours)
            assert out["results"][name][f"{figure},none"] == pytest.approx(mine), (name, k)
            accuracies.append(mine)
    assert any(0 < a < 1 for a in accuracies)  # the figures compared are not all-or-nothing
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_heldout_loss_equals_the_models_own_loss_on_the_labelled_tokens(tokenizer):
    """evaluate's held-out loss runs the output layer on labelled positions only: the same mean
    per-token loss as the model's own forward with labels, padding and soft-capping included."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from pipeline.evaluation.harness import heldout_loss

    examples = []
    for rec in RECORDS[:5]:
        ids = tokenizer(likelihood.plain_context(rec, []) + " " + rec["options"][rec["answer"]])["input_ids"]
        cut = len(ids) - 3 - len(examples)  # answers of different lengths, and so padding
        examples.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    torch.manual_seed(5)
    capped = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0, pad_token_id=tokenizer.pad_token_id)).eval()
    for model in (tiny_model(tokenizer, seed=4), capped):
        total = count = 0
        for ex in examples:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            n = sum(x != -100 for x in ex["labels"][1:])
            total += float(out.loss) * n
            count += n
        loss, tokens = heldout_loss(model, tokenizer, examples, batch_size=2)
        assert tokens == count
        assert loss == pytest.approx(total / count, abs=1e-5)
