"""What pipeline.chat says before a chat starts (pipeline.chat.figures): the knowledge figures of the
last evaluation, tuned vs base with the paired difference, the control beside them, and what was kept
outside the domain (the general sets' cloze accuracy); nothing without an evaluation."""

from __future__ import annotations

import json

from pipeline.chat.figures import knowledge_lines
from pipeline.evaluation import stats


def test_knowledge_and_general_lines_with_counts_intervals_and_differences(tmp_path):
    def model(k_cloze, k_general):
        return {"knowledge": {"cloze": stats.rate(k_cloze, 40),
                              "by_group": {"not_stated": {"cloze": stats.rate(2, 8)}}},
                "mc": {"general": {"cloze": {"0shot": {"acc_norm": k_general / 500, "n": 500,
                                                       "acc_norm_ci95": stats.wilson(k_general, 500)}}}}}
    metrics = {"base": model(10, 300), "tuned": model(20, 295), "general_sets": ["general"],
               "comparison": {"knowledge.cloze": stats.paired([False] * 10 + [True] * 10 + [False] * 20,
                                                              [True] * 10 + [True] * 10 + [False] * 20),
                              "mc.general.cloze.0shot.acc_norm": {"delta": -0.01, "ci95": [-0.03, 0.012],
                                                                  "p_value": 0.4, "n": 500}}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(metrics))
    lines = knowledge_lines(path)
    assert lines[0].startswith("knowledge of the test facts (")
    assert lines[1].startswith("  all test facts: base 25.0% (10/40) [14.2, 40.2] -> tuned 50.0% (20/40) [35.2, 64.8]; "
                               "+25.0 points [")
    assert lines[2] == "  control, not stated: base 25.0% (2/8) [7.1, 59.1] -> tuned 25.0% (2/8) [7.1, 59.1]"
    assert lines[3] == ("  outside the domain (general): base 60.0% (300/500) [55.6, 64.2] -> tuned 59.0% (295/500) "
                        "[54.6, 63.2]; -1.0 points [-3.0, +1.2], p = 0.4")
    assert len(lines) == 4
    assert knowledge_lines(tmp_path / "missing.json") == []
