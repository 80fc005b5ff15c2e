"""The GraphQL schema: root types assembled from resolvers, guarded by permissions."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

import strawberry
from graphql.error import GraphQLError
from strawberry.types import ExecutionContext

from resolvers import auth as auth_r
from resolvers import subscriptions as sub_r
from resolvers import users as users_r
from schema.auth import ApiKey, ApiKeyPayload, AuthPayload
from schema.extensions import default_extensions
from schema.permissions import (
    CanManageApiKeys,
    CanManageUsers,
    CanRead,
    IsAuthenticated,
)
from schema.relay import Connection
from schema.users import Tenant, User


@strawberry.type
class Query:
    me: User = strawberry.field(resolver=users_r.me, permission_classes=[IsAuthenticated])
    tenant: Tenant = strawberry.field(resolver=users_r.tenant, permission_classes=[IsAuthenticated])
    users: Connection[User] = strawberry.field(resolver=users_r.users, permission_classes=[CanRead])
    api_keys: list[ApiKey] = strawberry.field(
        resolver=auth_r.api_keys, permission_classes=[CanManageApiKeys]
    )


@strawberry.type
class Mutation:
    register: AuthPayload = strawberry.mutation(resolver=auth_r.register)
    login: AuthPayload = strawberry.mutation(resolver=auth_r.login)
    refresh_token: AuthPayload = strawberry.mutation(resolver=auth_r.refresh_token)
    logout: bool = strawberry.mutation(resolver=auth_r.logout)

    create_user: User = strawberry.mutation(
        resolver=users_r.create_user, permission_classes=[CanManageUsers]
    )
    update_user_role: User = strawberry.mutation(
        resolver=users_r.update_user_role, permission_classes=[CanManageUsers]
    )
    deactivate_user: User = strawberry.mutation(
        resolver=users_r.deactivate_user, permission_classes=[CanManageUsers]
    )
    create_api_key: ApiKeyPayload = strawberry.mutation(
        resolver=auth_r.create_api_key, permission_classes=[CanManageApiKeys]
    )
    revoke_api_key: bool = strawberry.mutation(
        resolver=auth_r.revoke_api_key, permission_classes=[CanManageApiKeys]
    )


@strawberry.type
class Subscription:
    @strawberry.subscription(permission_classes=[IsAuthenticated])
    async def heartbeat(
        self, info: strawberry.Info, interval_seconds: float = 10.0
    ) -> AsyncGenerator[datetime, None]:
        async for beat in sub_r.heartbeat(info, interval_seconds):
            yield beat


class CrewgraphSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Unexpected errors are logged where they are classified (schema.errors)."""


def build_schema(
    *, max_depth: int = 12, max_aliases: int = 30, max_tokens: int = 5000
) -> strawberry.Schema:
    return CrewgraphSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=default_extensions(
            max_depth=max_depth, max_aliases=max_aliases, max_tokens=max_tokens
        ),
    )


schema = build_schema()
