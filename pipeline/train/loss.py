"""The training loss: next-token cross-entropy over the labelled positions only.

A causal LM's own loss keeps logits over the vocabulary at every position for the backward pass, though most
positions of a chat row have no label. Here the labelled positions' hidden states go through the output layer and
the cross-entropy in chunks, each chunk's gradients computed at once and its logits freed: Liger's fused linear
cross-entropy, in plain torch. Design: docs/gpus.md ("The loss").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # the label of positions without a loss (the Trainer's and transformers' convention)


def model_parts(model):
    """(decoder body, output layer, logit soft-capping) of a causal LM, through DDP and PEFT
    wrappers; the soft-capping is Gemma's final_logit_softcapping, else None. The output layer
    is a module to call rather than a weight to read: under PEFT it may be a trainable-tokens
    wrapper (trained rows of new tokens) or a LoRA-wrapped Linear, whose forward is the layer's
    function."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    softcap = getattr(inner.config.get_text_config(), "final_logit_softcapping", None)
    return inner.get_decoder(), inner.get_output_embeddings(), softcap


def _chunk_loss(head, softcap, hidden, targets):
    logits = head(hidden)
    if softcap is not None:  # as the model's own forward does after its output layer
        logits = (logits / softcap).tanh() * softcap
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")


class _ChunkedCrossEntropy(torch.autograd.Function):
    """The cross-entropy of `hidden` through `head` against `targets`, summed and divided by
    `divisor`, `chunk_tokens` positions at a time. `params` are the head's trainable parameters:
    their gradients, and the hidden states', are computed chunk by chunk during the forward pass
    (dividing first, as the backward pass of `sum / divisor` would) and handed out, times the
    upstream gradient, in the backward pass: the loss is linear in it."""

    @staticmethod
    def forward(ctx, hidden, targets, head, softcap, chunk_tokens, divisor, *params):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden)
        grad_params = [torch.zeros_like(p) for p in params]
        for start in range(0, hidden.shape[0], chunk_tokens):
            piece = hidden[start:start + chunk_tokens].detach().requires_grad_()
            with torch.enable_grad():
                loss = _chunk_loss(head, softcap, piece, targets[start:start + chunk_tokens]) / divisor
            grads = torch.autograd.grad(loss, [piece, *params], allow_unused=True, materialize_grads=True)
            grad_hidden[start:start + chunk_tokens] = grads[0]
            for acc, grad in zip(grad_params, grads[1:], strict=True):
                acc += grad
            total += loss.detach()
        ctx.save_for_backward(grad_hidden, *grad_params)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, *grad_params = ctx.saved_tensors
        return grad_hidden * grad_out, None, None, None, None, None, *(g * grad_out for g in grad_params)


def chunked_label_loss(model, inputs: dict, num_items_in_batch=None, chunk_tokens: int = 256):
    """(loss, the model's outputs) for a batch with `labels`: the causal-LM cross-entropy summed
    over the labelled tokens, divided by their number, or by the Trainer's num_items_in_batch
    (the labelled tokens of all accumulated micro-batches) where it is given. A batch without
    labels gives a zero loss that still has a graph through the body and the output layer, so
    that every process of a distributed run has gradients to synchronise.

    The outputs are the model's, with logits at no position (the Trainer evaluates the loss
    only)."""
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    decoder, head, softcap = model_parts(model)
    # The decoder's output is what the output layer would read. output_hidden_states would give
    # it too, but would also keep every layer's output alive until the loss is computed.
    last = []
    hook = decoder.register_forward_hook(lambda module, args, out: last.append(out[0]))
    try:
        outputs = model(**kwargs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=labels.device),
                        use_cache=False)
    finally:
        hook.remove()
    hidden, targets = last[-1][:, :-1], labels[:, 1:]
    labelled = targets != IGNORE
    count = int(labelled.sum())
    if count:
        hidden, targets = hidden[labelled], targets[labelled]
        divisor = num_items_in_batch if num_items_in_batch is not None else count
    else:
        hidden, targets, divisor = hidden[0, :1], targets[0, :1], 1  # one ignored position: zero, with a graph
    if torch.is_tensor(divisor):
        divisor = divisor.to(hidden.device)
    if not torch.is_grad_enabled():  # evaluation: the loss alone
        chunks = zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True)
        return sum(_chunk_loss(head, softcap, h, t) for h, t in chunks) / divisor, outputs
    trainable = [p for p in head.parameters() if p.requires_grad]
    return _ChunkedCrossEntropy.apply(hidden, targets, head, softcap, chunk_tokens, divisor, *trainable), outputs
