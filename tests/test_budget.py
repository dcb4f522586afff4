"""The context budget: what is left out of a request, and what always stays."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from copilotd.providers import ChatMessage
from copilotd.sessions.token_budget import estimate_tokens, fit_to_budget, message_tokens

SYSTEM = ChatMessage("system", "You are helpful.")


def history_of(lengths: list[int]) -> list[ChatMessage]:
    """Alternating user/assistant messages of the given sizes, ending with a user message."""
    roles = ["user", "assistant"] * len(lengths)
    messages = [
        ChatMessage(role, "x" * size, sequence=10 + i)  # type: ignore[arg-type]
        for i, (role, size) in enumerate(zip(roles, lengths, strict=False))
    ]
    if messages[-1].role != "user":
        messages.append(ChatMessage("user", "newest", sequence=10 + len(messages)))
    return messages


def test_estimate_is_high_for_english_and_counts_bytes() -> None:
    english = "The quick brown fox jumps over the lazy dog. " * 10  # ~100 real tokens
    assert estimate_tokens(english) == 150
    assert estimate_tokens("日本語") == 3  # 9 bytes
    assert estimate_tokens("") == 0
    assert message_tokens(ChatMessage("user", "abc")) == 1 + 4


def test_nothing_is_left_out_within_the_budget_or_without_one() -> None:
    history = history_of([30, 30, 30])
    total = message_tokens(SYSTEM) + sum(message_tokens(m) for m in history)
    for budget in (None, total):
        fitted = fit_to_budget(SYSTEM, history, budget)
        assert fitted.messages == [SYSTEM, *history]
        assert fitted.truncation is None and fitted.tokens == total


def test_oldest_are_left_out_first_and_the_report_says_what() -> None:
    history = history_of([300, 30, 30, 30, 30])  # u a u a u; 300 bytes = 100 tokens
    fitted = fit_to_budget(SYSTEM, history, 100)
    # The big first question goes, and so does its answer (a history starts with the user).
    assert fitted.messages == [SYSTEM, *history[2:]]
    report = fitted.truncation
    assert report is not None
    assert (report.pre_messages, report.post_messages, report.messages_removed) == (6, 4, 2)
    assert report.tokens_removed == message_tokens(history[0]) + message_tokens(history[1])
    assert report.first_kept_sequence == history[2].sequence
    assert report.token_limit == 100 and report.post_tokens == fitted.tokens <= 100


def test_kept_history_never_starts_with_an_answer() -> None:
    history = history_of([30, 300, 30])  # the answer is big: it cannot stay without its question
    fitted = fit_to_budget(SYSTEM, history, 40)
    assert fitted.messages == [SYSTEM, history[-1]]


def test_the_newest_user_message_stays_even_over_the_budget() -> None:
    history = history_of([30, 30, 3000])
    fitted = fit_to_budget(SYSTEM, history, 50)
    assert fitted.messages == [SYSTEM, history[-1]]
    assert fitted.truncation is not None and fitted.tokens > 50


@given(
    lengths=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=30),
    budget=st.integers(min_value=1, max_value=2000),
)
def test_fitting_rules_hold_for_any_history(lengths: list[int], budget: int) -> None:
    history = history_of(lengths)
    fitted = fit_to_budget(SYSTEM, history, budget)
    kept = fitted.messages[1:]
    assert fitted.messages[0] == SYSTEM
    assert kept and kept[-1] == history[-1]  # the newest user message
    assert kept == history[len(history) - len(kept) :]  # a suffix: the oldest went first
    assert kept[0].role == "user"
    assert fitted.tokens == sum(message_tokens(m) for m in fitted.messages)
    if len(kept) > 1:
        assert fitted.tokens <= budget
    report = fitted.truncation
    if report is None:
        assert kept == history
    else:
        assert report.messages_removed == len(history) - len(kept) > 0
        assert report.first_kept_sequence == kept[0].sequence
        # As much as fits is kept: one more (user-started) message would overflow.
        earlier = history[: len(history) - len(kept)]
        if earlier and earlier[-1].role == "user":
            assert fitted.tokens + message_tokens(earlier[-1]) > budget
