"""Strawberry permission classes over the one policy table in domain.rbac."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from domain.rbac import Action
from schema.context import Info


class RequiresAction(BasePermission):
    """Allows the field when the caller's role may do `action` (set by each subclass)."""

    action: Action

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = await info.context.principal()
        principal.require(self.action)  # raises FORBIDDEN naming the role and action
        return True


class IsAuthenticated(BasePermission):
    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        await info.context.principal()  # raises UNAUTHENTICATED
        return True


class CanRead(RequiresAction):
    action = Action.READ


class CanWrite(RequiresAction):
    action = Action.WRITE


class CanRun(RequiresAction):
    action = Action.RUN


class CanManageUsers(RequiresAction):
    action = Action.MANAGE_USERS


class CanManageApiKeys(RequiresAction):
    action = Action.MANAGE_API_KEYS


class CanManageProviders(RequiresAction):
    action = Action.MANAGE_PROVIDERS


class CanManageWebhooks(RequiresAction):
    action = Action.MANAGE_WEBHOOKS
