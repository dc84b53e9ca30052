"""Hugging Face vs llama.cpp: the comparison kit that verify_export runs on every GGUF we write
and that base_check runs on the base model materialised from a GGUF.

- `Reference`: a HF model and tokenizer, their ids (BOS policy included) and logits;
- `load_llama`, `llama_logits`, `llama_piece`: llama.cpp (llama-cpp-python) on the same ids;
- `tokenizer_parity`: token ids and decoded text, string by string, with the first difference;
- `compare_logits`: top-1 agreement and max |difference|, near-ties counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data import chat_format
from pipeline.runtime.device import torch_dtype


@dataclass
class Reference:
    """The merged HF model and its tokenizer: what every GGUF is compared with."""

    tokenizer: object
    model: object
    eot_id: int
    _cache: dict = field(default_factory=dict)

    @classmethod
    def load(cls, merged_dir: Path, device: str = "cpu") -> Reference:
        """float32 on the CPU; on CUDA in bfloat16 where the GPU has it (a 7B in float32 on a
        CPU took hours), which the gpu profiles' tie tolerance allows for."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch_dtype("auto", device),
                                                     device_map={"": device} if device != "cpu" else None).eval()
        return cls(tokenizer, model, tokenizer.convert_tokens_to_ids(chat_format.IM_END))

    def encode(self, text: str) -> list[int]:
        # add_special_tokens: the tokenizer's own BOS/EOS policy; a text rendered by a template
        # that starts with the BOS (Gemma's) has it already
        return list(self.tokenizer(text, add_special_tokens=not self.has_bos(text))["input_ids"])

    def has_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return bool(bos) and chat_format.adds_bos(self.tokenizer) and text.startswith(bos)

    def logits(self, ids: list[int]):
        import torch

        key = tuple(ids)
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = self.model(torch.tensor([ids], device=self.model.device)).logits[0].float().cpu().numpy()
        return self._cache[key]

    def piece(self, idx: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(idx)


def load_llama(path: Path, n_ctx: int, threads: int):
    import llama_cpp

    # KV cache in f32 like the HF model: the file is under test, not llama.cpp's f16 cache default
    # (which alone moves gemma-3-270m's top-1 on near-ties).
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                           logits_all=True, verbose=False, seed=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_piece(llm, idx: int) -> str:
    return llm.detokenize([idx], special=True).decode("utf-8", errors="replace")


def llama_logits(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def tokenizer_parity(ref: Reference, llm, texts: list[str]) -> tuple[dict, list[str]]:
    """llama.cpp's ids (add_special: its BOS/EOS policy; special tokens parsed) vs transformers'."""
    problems = []
    for text in texts:
        hf = ref.encode(text)
        ll = llm.tokenize(text.encode("utf-8"), add_bos=not ref.has_bos(text), special=True)
        if hf != ll:
            i = first_difference(hf, ll)
            hf_at = f"{hf[i]} {ref.piece(hf[i])!r}" if i < len(hf) else "end"
            ll_at = f"{ll[i]} {llama_piece(llm, ll[i])!r}" if i < len(ll) else "end"
            problems.append(f"{text[:60]!r}: {len(hf)} HF tokens vs {len(ll)} llama.cpp tokens, first "
                            f"difference at token {i}: HF {hf_at}, llama.cpp {ll_at}")
            continue
        # and back: the text a user sees (special tokens hidden, think/tool tags kept) is the same.
        # Without the BOS: generated tokens never start with it, and llama.cpp drops a space
        # after a leading BOS when it hides special tokens.
        body = hf[1:] if hf[:1] == [ref.tokenizer.bos_token_id] else hf
        hf_text = ref.tokenizer.decode(body, skip_special_tokens=True)
        ll_text = llm.detokenize(body, special=False).decode("utf-8", errors="replace")
        if hf_text != ll_text:
            i = first_difference(list(hf_text), list(ll_text))
            problems.append(f"{text[:60]!r}: same tokens, but decoded differently at character {i}: "
                            f"HF {hf_text[max(0, i - 15):i + 15]!r}, llama.cpp {ll_text[max(0, i - 15):i + 15]!r}")
    return {"strings": len(texts), "identical": len(texts) - len(problems)}, problems


def compare_logits(hf, ll, tie_tolerance: float) -> dict:
    """Top-1 agreement over positions; a disagreement where HF's logit for llama.cpp's choice is
    within tie_tolerance of HF's best is a tie, not an error."""
    import numpy as np

    vocab = min(hf.shape[-1], ll.shape[-1])  # converters may pad the vocabulary
    hf, ll = hf[:, :vocab], ll[:, :vocab]
    top_hf, top_ll = hf.argmax(-1), ll.argmax(-1)
    rows = np.arange(len(hf))
    agree = top_hf == top_ll
    tie = ~agree & (hf[rows, top_hf] - hf[rows, top_ll] <= tie_tolerance)
    return {"positions": int(len(hf)), "agree": int(agree.sum()), "ties": int(tie.sum()),
            "max_abs_diff": float(np.abs(hf - ll).max()) if len(hf) else 0.0}
