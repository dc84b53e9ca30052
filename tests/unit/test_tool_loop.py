"""The one tool loop (pipeline.tools.loop), which evaluation and the chat client both run."""

from pipeline.tools.loop import tool_loop

CALL = [{"name": "search", "arguments": {"query": "q"}}]


def test_each_conversation_ends_answered_at_the_round_limit_or_as_act_says():
    # conversation 0 answers at once; 1 calls once, then answers; 2 always calls; 3 calls, and its
    # next prompt would not fit
    script = {0: [[]], 1: [CALL, []], 2: [CALL, CALL, CALL, CALL], 3: [CALL]}
    rounds, acted = [], []

    def respond(live):
        rounds.append(list(live))
        return [script[i][len([r for r in rounds if i in r]) - 1] for i in live]

    def act(i, calls):
        acted.append(i)
        return "context_full" if i == 3 else None

    ends = tool_loop(4, respond, act, max_rounds=2)
    assert ends == {0: "answered", 1: "answered", 2: "round_limit", 3: "context_full"}
    assert rounds == [[0, 1, 2, 3], [1, 2], [2]]
    assert acted == [1, 2, 3, 2]  # no act at the limit: the last round's calls are not run


def test_no_rounds_of_calls_allowed_ends_a_calling_turn_at_once():
    assert tool_loop(1, lambda live: [CALL], lambda i, calls: None, max_rounds=0) == {0: "round_limit"}
