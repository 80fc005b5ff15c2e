"""State machines of executions and nodes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from domain.errors import Conflict, DomainError
from domain.executions.state import (
    EXECUTION_TRANSITIONS,
    NODE_TRANSITIONS,
    ExecutionStatus,
    IllegalTransition,
    NodeStatus,
    can_transition,
    is_terminal,
    transition,
)

E = ExecutionStatus
N = NodeStatus


def _moves(enum: type[E] | type[N], moves: str) -> list[tuple[E | N, E | N]]:
    """`"A>B C>D"` as (current, target) pairs of `enum` members."""
    return [(enum[a], enum[b]) for a, b in (move.split(">") for move in moves.split())]


# Execution RUNNING>PENDING: the lease expired and the execution was re-dispatched.
ALLOWED = _moves(
    E,
    "PENDING>RUNNING PENDING>CANCELLED RUNNING>COMPLETED RUNNING>FAILED RUNNING>CANCELLED "
    "RUNNING>PENDING RUNNING>WAITING WAITING>PENDING WAITING>CANCELLED",
) + _moves(
    N,
    "PENDING>RUNNING PENDING>SKIPPED PENDING>CANCELLED RUNNING>COMPLETED RUNNING>FAILED "
    "RUNNING>CANCELLED RUNNING>PENDING RUNNING>WAITING WAITING>COMPLETED WAITING>FAILED "
    "WAITING>CANCELLED",
)
ILLEGAL = _moves(
    E,
    "PENDING>COMPLETED PENDING>PENDING RUNNING>RUNNING COMPLETED>RUNNING COMPLETED>FAILED "
    "FAILED>RUNNING FAILED>PENDING CANCELLED>RUNNING CANCELLED>COMPLETED "
    "PENDING>WAITING WAITING>RUNNING WAITING>COMPLETED COMPLETED>WAITING",
) + _moves(
    N,
    "PENDING>COMPLETED PENDING>FAILED RUNNING>SKIPPED SKIPPED>RUNNING COMPLETED>PENDING "
    "FAILED>RUNNING CANCELLED>RUNNING PENDING>WAITING WAITING>RUNNING WAITING>PENDING",
)


@pytest.mark.parametrize(("current", "target"), ALLOWED)
def test_allowed_transitions(current: Any, target: Any) -> None:
    assert transition(current, target) is target
    assert can_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_illegal_transitions_raise_a_conflict(current: Any, target: Any) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition) as info:
        transition(current, target)
    error = info.value
    assert isinstance(error, Conflict) and isinstance(error, DomainError)
    assert error.code == "CONFLICT"
    kind = "execution" if isinstance(current, E) else "node"
    assert error.message == f"illegal {kind} state transition {current.value} -> {target.value}"
    assert error.extensions == {"from": current.value, "to": target.value}


def test_terminal_states_are_final() -> None:
    for status in E:
        assert is_terminal(status) == (status in {E.COMPLETED, E.FAILED, E.CANCELLED})
        if is_terminal(status):
            assert not EXECUTION_TRANSITIONS[status]
            for target in E:
                with pytest.raises(IllegalTransition):
                    transition(status, target)
    for node_status in N:
        terminal = node_status in {N.COMPLETED, N.FAILED, N.SKIPPED, N.CANCELLED}
        assert is_terminal(node_status) == terminal
        assert (not NODE_TRANSITIONS[node_status]) == terminal


def test_tables_cover_every_state_and_never_mix_the_two_enums() -> None:
    assert set(EXECUTION_TRANSITIONS) == set(E)
    assert set(NODE_TRANSITIONS) == set(N)
    # The enums share string values ("PENDING" == "PENDING"); the table is picked by type.
    assert transition(N.PENDING, N.SKIPPED) is N.SKIPPED
    with pytest.raises(IllegalTransition, match="illegal execution state transition"):
        transition(E.PENDING, E.COMPLETED)
    for a, b in itertools.product(E, E):
        assert can_transition(a, b) == (b in EXECUTION_TRANSITIONS[a])


def test_statuses_are_str_enums_matching_the_graphql_contract() -> None:
    assert [s.value for s in E] == [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "WAITING",
    ]
    assert [s.value for s in N] == [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "SKIPPED",
        "CANCELLED",
        "WAITING",
    ]
    assert E("RUNNING") is E.RUNNING and f"{E.RUNNING}" == "RUNNING"
