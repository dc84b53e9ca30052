"""The tool loop, one for every caller: a model's turn, the tool calls in it run and their results
given back as the next turns, until the model answers without a call, the rounds run out or the
conversation cannot go on. Evaluation runs many conversations side by side (one batched generation
per round); the chat client runs one against a server. What a turn is (token ids, an OpenAI
message) stays with the caller; the loop decides only who goes on."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def tool_loop(conversations: int, respond: Callable[[list[int]], Sequence[list[dict]]],
              act: Callable[[int, list[dict]], str | None], max_rounds: int) -> dict[int, str]:
    """Run `conversations` conversations (numbered 0..n-1) to their ends; returns each one's end.

    Each round, `respond(live)` has the model take its turn in every live conversation (in the
    order given) and returns the tool calls of each turn. A turn without calls ends its
    conversation ("answered"); after `max_rounds` rounds of calls, a turn with calls ends it too
    ("round_limit"), its calls not run. Otherwise `act(i, calls)` runs the calls and adds the turns
    to conversation i; it returns None to go on, or why the conversation ends (for example that
    the next prompt no longer fits the context)."""
    ends: dict[int, str] = {}
    live = list(range(conversations))
    for round_ in range(max_rounds + 1):
        following = []
        for i, calls in zip(live, respond(live), strict=True):
            if not calls:
                ends[i] = "answered"
            elif round_ == max_rounds:
                ends[i] = "round_limit"
            elif (end := act(i, calls)) is None:
                following.append(i)
            else:
                ends[i] = end
        live = following
        if not live:
            break
    return ends
