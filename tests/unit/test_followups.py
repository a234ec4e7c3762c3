"""Follow-up questions made standalone: the rule, and what of an LLM's rewrite is used."""

from __future__ import annotations

from core.protocol import Turn
from workers.followups import by_rule, clean_rewrite, rewrite_messages
from workers.sparse import Bm25Encoder

HISTORY = [Turn("user", "Who sent the delay notices to Brisamar?"),
           Turn("assistant", "Priya Nair of Tidewell sent them on 21 February and 9 March 2025 [1]."),
           Turn("user", "What notice period did the contract require?")]


def test_the_rule_adds_the_earlier_questions_salient_terms_most_recent_first() -> None:
    rule = by_rule(Bm25Encoder(), "And how did she respond to the second one?", HISTORY, limit=6)
    # Stopwords and words the question holds are left out; assistant turns are not mined.
    assert rule == "And how did she respond to the second one? (notice period contract require sent delay)"
    assert by_rule(Bm25Encoder(), "Which notices?", HISTORY, limit=3) == "Which notices? (period contract require)"
    assert by_rule(Bm25Encoder(), "Anything?", [], limit=3) == "Anything?"


def test_a_rewrite_is_used_only_when_it_is_a_question_of_sensible_length() -> None:
    q = "And by when?"
    assert clean_rewrite('Rewritten question: "By when must the delay be notified?"\nextra', q) == (
        "By when must the delay be notified?")
    assert clean_rewrite("", q) is None and clean_rewrite(None, q) is None
    assert clean_rewrite("I'm sorry, I cannot help with that.", q) is None
    assert clean_rewrite("word " * 100, q) is None


def test_the_rewrite_prompt_cuts_assistant_turns_short() -> None:
    long = [Turn("user", "First?"), Turn("assistant", "x " * 400)]
    prompt = rewrite_messages("Second?", long)[1]["content"]
    assert "User: First?" in prompt and prompt.rstrip().endswith("Rewritten last question:")
    assert len(prompt) < 500
