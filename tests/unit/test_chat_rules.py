"""Chat rules without I/O: inputs, the message limit, the reply lock, history, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.chat.model import (
    ChatLimits,
    ChatRole,
    ChatSession,
    ChatSessionInput,
    ChatToken,
    HistoryMessage,
    agent_task,
    decode_cursor,
    encode_cursor,
    estimate_tokens,
    fit_history,
    release,
    reserve,
    split_reply,
    to_llm_messages,
    undo_reservation,
    validate_content,
    validate_session,
)
from domain.errors import BadUserInput, Conflict, LimitExceeded

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = ChatLimits(max_message_limit=500, reply_lease_seconds=10)


def _session(**over: object) -> ChatSession:
    values: dict[str, object] = {
        "id": "s1",
        "title": None,
        "llm_provider_id": "p1",
        "agent_id": None,
        "system_prompt": None,
        "message_limit": 6,
        "created_at": NOW,
    }
    values.update(over)
    return ChatSession(**values)  # type: ignore[arg-type]


def test_a_session_is_bound_to_exactly_one_target_with_a_bounded_limit() -> None:
    ok = validate_session(ChatSessionInput(title="  Hi ", llm_provider_id="p"), LIMITS)
    assert ok.title == "Hi" and ok.message_limit == 100 and ok.system_prompt is None
    assert (
        validate_session(ChatSessionInput(agent_id="a", system_prompt=" "), LIMITS).system_prompt
        is None
    )
    for bad, field in (
        (ChatSessionInput(), "input.agentId"),
        (ChatSessionInput(llm_provider_id="p", agent_id="a"), "input.llmProviderId"),
        (ChatSessionInput(llm_provider_id="p", message_limit=1), "input.messageLimit"),
        (ChatSessionInput(llm_provider_id="p", message_limit=501), "input.messageLimit"),
        (ChatSessionInput(llm_provider_id="p", system_prompt="x" * 20_001), "input.systemPrompt"),
    ):
        with pytest.raises(BadUserInput) as caught:
            validate_session(bad, LIMITS)
        assert field in caught.value.fields
    # The default never passes the deployment's maximum.
    small = ChatLimits(max_message_limit=10)
    assert validate_session(ChatSessionInput(llm_provider_id="p"), small).message_limit == 10


def test_content_must_be_present_and_bounded() -> None:
    assert validate_content("hi", LIMITS) == "hi"
    for bad in ("", "  \n", "x" * (LIMITS.max_content_chars + 1)):
        with pytest.raises(BadUserInput):
            validate_content(bad, LIMITS)


def test_reserve_takes_two_messages_and_locks_the_session() -> None:
    s = _session()
    r = reserve(s, NOW, LIMITS)
    assert (r.user_seq, r.reply_seq) == (1, 2) and r.user_id != r.reply_id
    assert s.message_count == 2 and s.last_seq == 2 and s.reply_id == r.reply_id
    assert s.reply_expires_at == NOW + timedelta(seconds=40)  # pending: four leases
    with pytest.raises(Conflict) as caught:
        reserve(s, NOW, LIMITS)
    assert "still streaming" in caught.value.message
    assert s.message_count == 2  # refused: unchanged
    assert release(s, r.reply_id) and s.reply_id is None
    assert not release(s, r.reply_id)


def test_the_limit_counts_the_message_and_its_reply() -> None:
    s = _session(message_limit=5, message_count=4, last_seq=4)
    with pytest.raises(LimitExceeded) as caught:
        reserve(s, NOW, LIMITS)
    assert "start a new session" in caught.value.message
    assert caught.value.extensions == {"messageLimit": 5, "messageCount": 4}
    s = _session(message_limit=6, message_count=4, last_seq=4)
    assert reserve(s, NOW, LIMITS).reply_seq == 6 and s.message_count == 6


def test_an_abandoned_reply_is_released_by_the_next_send() -> None:
    s = _session(reply_id="old", reply_owner="w", reply_expires_at=NOW - timedelta(seconds=1))
    r = reserve(s, NOW, LIMITS)
    assert r.stale_reply == "old" and s.reply_id == r.reply_id and s.reply_owner is None


def test_a_session_whose_target_was_deleted_refuses_sends() -> None:
    with pytest.raises(Conflict, match="start a new session"):
        reserve(_session(llm_provider_id=None), NOW, LIMITS)


def test_undo_gives_back_the_counter_but_never_the_sequences() -> None:
    s = _session()
    r = reserve(s, NOW, LIMITS)
    assert undo_reservation(s, r)
    assert s.message_count == 0 and s.reply_id is None and s.last_seq == 2
    assert reserve(s, NOW, LIMITS).user_seq == 3
    assert not undo_reservation(s, r)  # another exchange holds the lock now


def test_history_keeps_the_newest_messages_and_always_the_system_prompt() -> None:
    msgs = [
        HistoryMessage(ChatRole.USER if i % 2 == 0 else ChatRole.ASSISTANT, f"m{i} " + "w" * 36)
        for i in range(10)
    ]
    per = estimate_tokens(msgs[0].content)  # 4 + 10
    window = 100  # 25 kept free for the reply: 75 for the prompt
    kept = fit_history(None, msgs, window)
    assert kept == msgs[-(75 // per) :]
    prompt = "p" * 80  # 24 tokens
    with_prompt = fit_history(prompt, msgs, window)
    assert with_prompt == msgs[-((75 - 24) // per) :]
    out = to_llm_messages(prompt, with_prompt)
    assert out[0] == {"role": "system", "content": prompt}
    assert [m["role"] for m in out[1:]] == ["assistant", "user", "assistant"][-len(with_prompt) :]
    # The message being answered is kept even when it alone passes the window.
    huge = [HistoryMessage(ChatRole.USER, "x" * 10_000)]
    assert fit_history(None, huge, 100) == huge


def test_an_agent_task_puts_the_question_first_then_the_conversation() -> None:
    history = [
        HistoryMessage(ChatRole.USER, "SAY: first"),
        HistoryMessage(ChatRole.ASSISTANT, "first"),
        HistoryMessage(ChatRole.USER, "SAY: second"),
    ]
    task = agent_task("Be brief.", history)
    assert task.startswith("SAY: second")
    assert task.index("Be brief.") < task.index("User: SAY: first\nAssistant: first")
    assert agent_task(None, history[-1:]) == "SAY: second"


def test_cursors_round_trip_and_garbage_is_bad_input() -> None:
    assert decode_cursor(encode_cursor(42)) == 42
    for bad in ("", "x", encode_cursor(-1), "WyJ4IiwgMV0"):
        with pytest.raises(BadUserInput):
            decode_cursor(bad)


def test_tokens_round_trip_and_replies_split_losslessly() -> None:
    token = ChatToken("s", "m", 3, "", True, "boom")
    assert ChatToken.from_json(token.to_json()) == token
    text = "a" * 50 + " b"
    assert "".join(split_reply(text)) == text and split_reply("") == []
