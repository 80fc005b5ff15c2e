"""Token usage and cost types (LLM calls per node run, execution and UTC day)."""

from __future__ import annotations

from datetime import date

import strawberry

from domain import llm as d


@strawberry.type(
    description="Tokens and cost of LLM calls; costUsd is null when a price is unknown."
)
class Usage:
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None

    @classmethod
    def from_domain(cls, u: d.Usage) -> Usage:
        return cls(
            llm_calls=u.llm_calls,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens,
            cost_usd=u.cost_usd,
        )


@strawberry.type(description="One UTC day of the team: executions created and LLM usage.")
class UsageDay:
    date: date
    executions: int
    usage: Usage

    @classmethod
    def from_domain(cls, day: d.UsageDay) -> UsageDay:
        return cls(date=day.day, executions=day.executions, usage=Usage.from_domain(day.usage))
