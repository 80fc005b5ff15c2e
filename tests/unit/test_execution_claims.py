"""The claim decision: what a worker's claim does with an execution, from its state."""

from __future__ import annotations

import pytest

from domain.executions.claims import ClaimAction, ClaimPolicy, ClaimState
from domain.executions.events import EventType
from domain.executions.state import ExecutionStatus

PENDING, RUNNING = ExecutionStatus.PENDING, ExecutionStatus.RUNNING
POLICY = ClaimPolicy(max_running=2, max_attempts=3)


@pytest.mark.parametrize(
    ("state", "action", "resume"),
    [
        (ClaimState(None), ClaimAction.FORGET, False),
        (ClaimState(ExecutionStatus.COMPLETED), ClaimAction.FORGET, False),
        (ClaimState(ExecutionStatus.CANCELLED, cancel_requested=True), ClaimAction.FORGET, False),
        (ClaimState(PENDING), ClaimAction.START, False),
        (ClaimState(RUNNING, lease_live=True), ClaimAction.SKIP, False),
        (ClaimState(RUNNING, lease_live=True, cancel_requested=True), ClaimAction.SKIP, False),
        (ClaimState(RUNNING, lease_live=False, attempts=1), ClaimAction.START, True),
        (ClaimState(PENDING, running_elsewhere=2), ClaimAction.SKIP, False),
        (ClaimState(RUNNING, running_elsewhere=2), ClaimAction.REQUEUE, True),
        (ClaimState(PENDING, running_elsewhere=1, attempts=2), ClaimAction.START, False),
    ],
)
def test_decisions(state: ClaimState, action: ClaimAction, resume: bool) -> None:
    decision = POLICY.decide(state)
    assert (decision.action, decision.resume) == (action, resume)


@pytest.mark.parametrize("status", [PENDING, RUNNING])
def test_a_cancel_request_ends_the_run_before_it_starts_again(status: ExecutionStatus) -> None:
    decision = POLICY.decide(ClaimState(status, cancel_requested=True, running_elsewhere=9))
    assert decision.action == ClaimAction.END
    assert decision.status == ExecutionStatus.CANCELLED and decision.error is None
    assert decision.event == EventType.EXECUTION_CANCELLED
    assert decision.event_data == {"cancelledNodes": []}


def test_gives_up_after_max_attempts_even_when_the_tenant_is_full() -> None:
    decision = POLICY.decide(ClaimState(RUNNING, attempts=3, running_elsewhere=5))
    assert decision.action == ClaimAction.END
    assert decision.status == ExecutionStatus.FAILED
    assert decision.error == "gave up after 3 attempts: the worker running it stopped each time"
    assert decision.event == EventType.EXECUTION_FAILED
    assert decision.event_data == {"error": decision.error, "nodeId": None}


def test_cancel_wins_over_giving_up() -> None:
    decision = POLICY.decide(ClaimState(PENDING, attempts=3, cancel_requested=True))
    assert decision.status == ExecutionStatus.CANCELLED


@pytest.mark.parametrize("status", [PENDING, RUNNING])
def test_a_suspended_tenants_run_is_cancelled_at_its_claim(status: ExecutionStatus) -> None:
    # Created or re-queued while the operator suspended the tenant: it never starts.
    decision = POLICY.decide(ClaimState(status, tenant_suspended=True, wake=True))
    assert decision.action is ClaimAction.END
    assert decision.status is ExecutionStatus.CANCELLED
    assert decision.error == "tenant suspended"
    assert decision.event is EventType.EXECUTION_CANCELLED
    # A WAITING one is ended by the suspension itself, a live lease's worker hears it.
    assert POLICY.decide(ClaimState(ExecutionStatus.WAITING, tenant_suspended=True)).action is (
        ClaimAction.SKIP
    )
    live = ClaimState(RUNNING, lease_live=True, tenant_suspended=True)
    assert POLICY.decide(live).action is ClaimAction.SKIP
