"""Roles and the one policy table every operation is checked against."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    ADMIN = "ADMIN"
    MEMBER = "MEMBER"
    VIEWER = "VIEWER"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.ADMIN: 3}


class Action(enum.StrEnum):
    READ = "read"  # any resource of the tenant
    WRITE = "write"  # agents, crews, tools, flows, chat
    RUN = "run"  # execute flows, test crews, cancel executions, answer approvals, validate tools
    MANAGE_USERS = "manage_users"
    MANAGE_API_KEYS = "manage_api_keys"
    MANAGE_PROVIDERS = "manage_providers"
    MANAGE_TENANT = "manage_tenant"
    READ_AUDIT_LOG = "read_audit_log"
    MANAGE_WEBHOOKS = "manage_webhooks"


POLICY: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.WRITE: Role.MEMBER,
    Action.RUN: Role.MEMBER,
    Action.MANAGE_USERS: Role.ADMIN,
    Action.MANAGE_API_KEYS: Role.ADMIN,
    Action.MANAGE_PROVIDERS: Role.ADMIN,
    Action.MANAGE_TENANT: Role.ADMIN,
    Action.READ_AUDIT_LOG: Role.ADMIN,
    Action.MANAGE_WEBHOOKS: Role.ADMIN,
}


def allows(role: Role, action: Action) -> bool:
    return role.at_least(POLICY[action])
