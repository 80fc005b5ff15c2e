"""State machines of executions and nodes."""

from __future__ import annotations

import itertools

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


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (E.PENDING, E.RUNNING),
        (E.PENDING, E.CANCELLED),
        (E.RUNNING, E.COMPLETED),
        (E.RUNNING, E.FAILED),
        (E.RUNNING, E.CANCELLED),
        (E.RUNNING, E.PENDING),  # lease expired, re-dispatched
    ],
)
def test_allowed_execution_transitions(current: E, target: E) -> None:
    assert transition(current, target) is target
    assert can_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (E.PENDING, E.COMPLETED),
        (E.PENDING, E.PENDING),
        (E.RUNNING, E.RUNNING),
        (E.COMPLETED, E.RUNNING),
        (E.COMPLETED, E.FAILED),
        (E.FAILED, E.RUNNING),
        (E.FAILED, E.PENDING),
        (E.CANCELLED, E.RUNNING),
        (E.CANCELLED, E.COMPLETED),
    ],
)
def test_illegal_execution_transitions_raise(current: E, target: E) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition) as info:
        transition(current, target)
    error = info.value
    assert isinstance(error, Conflict) and isinstance(error, DomainError)
    assert error.code == "CONFLICT"
    assert f"{current.value} -> {target.value}" in error.message
    assert error.extensions == {"from": current.value, "to": target.value}


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (N.PENDING, N.RUNNING),
        (N.PENDING, N.SKIPPED),
        (N.PENDING, N.CANCELLED),
        (N.RUNNING, N.COMPLETED),
        (N.RUNNING, N.FAILED),
        (N.RUNNING, N.CANCELLED),
        (N.RUNNING, N.PENDING),
    ],
)
def test_allowed_node_transitions(current: N, target: N) -> None:
    assert transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (N.PENDING, N.COMPLETED),
        (N.PENDING, N.FAILED),
        (N.RUNNING, N.SKIPPED),
        (N.SKIPPED, N.RUNNING),
        (N.COMPLETED, N.PENDING),
        (N.FAILED, N.RUNNING),
        (N.CANCELLED, N.RUNNING),
    ],
)
def test_illegal_node_transitions_raise(current: N, target: N) -> None:
    with pytest.raises(IllegalTransition, match="illegal node state transition"):
        transition(current, target)


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
    assert [s.value for s in E] == ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
    assert [s.value for s in N] == [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "SKIPPED",
        "CANCELLED",
    ]
    assert E("RUNNING") is E.RUNNING and f"{E.RUNNING}" == "RUNNING"
