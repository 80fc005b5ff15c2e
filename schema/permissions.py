"""Strawberry permission classes over the one policy table in domain.rbac."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from domain.rbac import Action
from schema.context import Info


class _Requires(BasePermission):
    action: Action

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = await info.context.principal()
        principal.require(self.action)  # raises FORBIDDEN naming the role and action
        return True


class IsAuthenticated(BasePermission):
    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        await info.context.principal()  # raises UNAUTHENTICATED
        return True


class CanRead(_Requires):
    action = Action.READ


class CanWrite(_Requires):
    action = Action.WRITE


class CanRun(_Requires):
    action = Action.RUN


class CanManageUsers(_Requires):
    action = Action.MANAGE_USERS


class CanManageApiKeys(_Requires):
    action = Action.MANAGE_API_KEYS


class CanManageProviders(_Requires):
    action = Action.MANAGE_PROVIDERS


class CanManageWebhooks(_Requires):
    action = Action.MANAGE_WEBHOOKS
