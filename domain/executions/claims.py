"""What a claim does with an execution, decided from its stored state (pure, no I/O).

A worker asks to run an execution; the lease store reads the row under its lock, asks
`ClaimPolicy.decide` what to do, applies the decision in the same transaction and hands
back what changed, which the runner then publishes. Keeping the rule here means every
store (PostgreSQL, the in-memory fakes of the unit tests) ends runs the same way:

- WAITING (at APPROVAL nodes): SKIP; it stays in the active index, where the sweeper
  finds its approval deadlines, and an answer makes it PENDING again;
- gone, or no longer PENDING / RUNNING: FORGET (drop it from the active index);
- RUNNING under a live lease: SKIP (someone runs it; a duplicate dispatch is harmless);
- cancel requested: END as CANCELLED with EXECUTION_CANCELLED {"cancelledNodes": []};
  so it is, with the error "tenant suspended", when the tenant is suspended (a run
  created or re-queued while the operator suspended it never starts);
- already started `max_attempts` times: END as FAILED ("gave up after N attempts"), so a
  run that kills its worker every time does not loop forever; a `wake` (the run resumes
  after an approval) is not a new attempt and is not counted;
- the tenant already runs `max_running` others (its concurrency quota when it has one,
  `domain.quotas`, else the server's): SKIP when PENDING (it waits, and is
  dispatched again when a slot frees up), REQUEUE when its lease expired (back to PENDING);
- otherwise START: RUNNING under the claimer's lease, one more attempt; `resume` when the
  previous worker vanished (its RUNNING nodes run again).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from domain.executions.events import EventType
from domain.executions.state import ExecutionStatus, transition

DEFAULT_MAX_ATTEMPTS = 5
#: The error of every run a tenant's suspension ended (domain/tenants.py).
TENANT_SUSPENDED_ERROR = "tenant suspended"
DEFAULT_MAX_RUNNING = 20


class ClaimAction(enum.StrEnum):
    FORGET = "forget"
    SKIP = "skip"
    END = "end"
    REQUEUE = "requeue"
    START = "start"


@dataclass(frozen=True, slots=True)
class ClaimState:
    """The stored execution as the claim sees it, read under the execution's row lock."""

    status: ExecutionStatus | None  # None: the execution does not exist (any more)
    lease_live: bool = False  # a lease is set and expires after the database's now()
    cancel_requested: bool = False
    attempts: int = 0
    running_elsewhere: int = 0  # other RUNNING executions of the tenant
    # The tenant's own concurrency quota (public.tenants.quota); None: the policy's.
    max_running: int | None = None
    wake: bool = False  # PENDING again after an approval was answered (or expired)
    tenant_suspended: bool = False  # the operator suspended the tenant


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    action: ClaimAction
    status: ExecutionStatus | None = None  # END: the terminal status
    error: str | None = None  # END: the execution's error
    event: EventType | None = None  # END: the terminal event to append
    event_data: dict[str, Any] | None = None
    resume: bool = False  # START / REQUEUE: the previous worker's RUNNING nodes run again
    wake: bool = False  # START: resumed after an approval (attempts unchanged)


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    max_running: int = DEFAULT_MAX_RUNNING  # RUNNING executions per tenant
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # starts of one execution

    def decide(self, state: ClaimState) -> ClaimDecision:
        status = state.status
        if status == ExecutionStatus.WAITING:
            return ClaimDecision(ClaimAction.SKIP)
        if status not in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING):
            return ClaimDecision(ClaimAction.FORGET)
        resume = status == ExecutionStatus.RUNNING
        if resume and state.lease_live:
            return ClaimDecision(ClaimAction.SKIP)
        if state.cancel_requested or state.tenant_suspended:
            return ClaimDecision(
                ClaimAction.END,
                status=transition(status, ExecutionStatus.CANCELLED),
                error=TENANT_SUSPENDED_ERROR if state.tenant_suspended else None,
                event=EventType.EXECUTION_CANCELLED,
                event_data={"cancelledNodes": []},
            )
        if state.attempts >= self.max_attempts and not (state.wake and not resume):
            error = give_up_message(state.attempts)
            return ClaimDecision(
                ClaimAction.END,
                status=transition(status, ExecutionStatus.FAILED),
                error=error,
                event=EventType.EXECUTION_FAILED,
                event_data={"error": error, "nodeId": None},
            )
        if state.running_elsewhere >= self.limit(state):
            return ClaimDecision(ClaimAction.REQUEUE if resume else ClaimAction.SKIP, resume=resume)
        return ClaimDecision(ClaimAction.START, resume=resume, wake=state.wake and not resume)

    def limit(self, state: ClaimState) -> int:
        """RUNNING executions the tenant may have; an unusable override (below 1, which
        would leave every run PENDING) falls back to the server's default."""
        if state.max_running is not None and state.max_running >= 1:
            return state.max_running
        return self.max_running


def give_up_message(attempts: int) -> str:
    return f"gave up after {attempts} attempts: the worker running it stopped each time"
