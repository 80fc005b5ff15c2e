"""The scripted local model's rules (runtime/scripted.py) and the gateway's pure helpers."""

from __future__ import annotations

import json
from typing import Any

from domain.llm import LlmTarget
from runtime.litellm_client import model_name, scrub
from runtime.scripted import count_tokens, script_reply, split_tokens

FILE_READ: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "file_read",
        "description": "read a file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_say_is_answered_verbatim_and_is_deterministic() -> None:
    messages = [{"role": "system", "content": "be brief"}, _user("please SAY: hello world")]
    assert script_reply(messages).content == "hello world"
    assert script_reply(messages) == script_reply(messages)
    assert script_reply([_user("what is up")]).content == "Scripted reply: what is up"


def test_json_mode_wraps_text_but_keeps_say_verbatim() -> None:
    reply = script_reply([_user("one two three")], json_mode=True).content
    assert json.loads(reply or "") == {"reply": "Scripted reply: one two three", "words": 3}
    assert script_reply([_user("SAY: not json")], json_mode=True).content == "not json"


def test_native_tool_call_when_offered_and_asked_then_final_answer() -> None:
    ask = _user('Please use tool file_read with {"path": "notes.txt"} and summarise')
    first = script_reply([ask], [FILE_READ])
    assert first.content is None and len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["function"]["name"] == "file_read"
    assert json.loads(call["function"]["arguments"]) == {"path": "notes.txt"}

    history = [
        ask,
        {"role": "assistant", "content": None, "tool_calls": list(first.tool_calls)},
        {"role": "tool", "tool_call_id": call["id"], "content": "the notes say 7"},
    ]
    second = script_reply(history, [FILE_READ])
    assert not second.tool_calls
    assert "after file_read: the notes say 7" in (second.content or "")


def test_tools_are_not_called_unless_offered_and_missing_args_are_filled() -> None:
    assert not script_reply([_user("use tool file_read")]).tool_calls
    turn = script_reply([_user("use the File-Read tool")], [FILE_READ])
    assert json.loads(turn.tool_calls[0]["function"]["arguments"]) == {"path": "scripted"}


def test_react_prompt_gets_actions_then_a_final_answer() -> None:
    system = (
        "You ONLY have access to the following tools...\n"
        "Action: the action to take, only one name of [file_read], just the name"
    )
    task = "Current Task: use tool file_read then report\n\nBegin!"
    first = script_reply([{"role": "system", "content": system}, _user(task)])
    assert first.content is not None
    assert "Action: file_read\nAction Input: {" in first.content
    history = [
        {"role": "system", "content": system},
        _user(task),
        {"role": "assistant", "content": first.content + "\nObservation: 12 lines"},
    ]
    final = script_reply(history).content or ""
    assert final.startswith("Thought: I now can give a great answer\nFinal Answer: ")
    assert "use tool file_read then report" in final


def test_tokens_join_back_and_prompt_tokens_count_words() -> None:
    text = "The answer  is\n42 "
    assert "".join(split_tokens(text)) == text
    assert len(split_tokens("a b c")) == 3
    assert count_tokens([_user("a b c"), {"role": "assistant", "content": "d"}]) == 3 + 4 + 1 + 4


def test_gateway_scrubs_keys_and_spells_models() -> None:
    message = "litellm.AuthenticationError: AuthenticationError: OpenAIException - bad key sk-1"
    assert scrub(message, "sk-1") == "bad key ***"
    target = LlmTarget("p", "n", "ollama", "llama3", None)
    assert model_name(target) == "ollama/llama3"
    assert model_name(LlmTarget("p", "n", "openai", "openai/gpt-4o", None)) == "openai/gpt-4o"


def test_scrub_removes_every_spelling_a_provider_may_echo() -> None:
    key = 'sk-"quo\\ted"'
    body = json.dumps({"error": f"bad key {key}"})  # JSON-escaped inside an error body
    assert key not in scrub(body, key) and json.dumps(key)[1:-1] not in scrub(body, key)
    assert "***" in scrub(body, key)
    assert scrub(f"header b'Bearer {key}'", key) == "header b'Bearer ***'"
    assert scrub("Invalid key: sk-trim.", " sk-trim ") == "Invalid key: ***."
    assert scrub(repr(f"x{key}"), key) == "'x***'"
