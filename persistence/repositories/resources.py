"""Repositories of tenant resources. All statements use the `tenant` placeholder
schema; the connection's schema_translate_map points it at the caller's tenant."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.agents import Agent, AgentOptions
from domain.auth import is_uuid
from domain.crews import Crew, CrewTask
from domain.flows.graph import ReferenceIndex
from domain.flows.service import Flow
from domain.ports import Page
from domain.providers import LlmProvider
from domain.secrets import Sealed
from domain.tools import Tool, ToolKind
from persistence import tables as t
from persistence.graphs import edges_from, edges_json, nodes_from, nodes_json
from persistence.pagination import paginate
from persistence.repositories.schedules import SqlSchedules

E = TypeVar("E")


def _ordered_ids(
    link: sa.Table, owner: str, item: str, of: sa.Column[Any], label: str
) -> sa.Label[Any]:
    """The ids a link table lists for the row `of` of the outer statement, in `position`
    order (NULL for none). JSON, not an array: the driver decodes json with the codec set
    when it connects, while an array type costs it a type lookup on every new connection."""
    return (
        sa.select(sa.func.json_agg(aggregate_order_by(link.c[item], link.c.position)))
        .where(link.c[owner] == of)
        .scalar_subquery()
        .label(label)
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _uuids(ids: Sequence[str]) -> list[str]:
    return [i for i in dict.fromkeys(ids) if is_uuid(i)]


class _SqlResource(Generic[E]):
    table: sa.Table
    kind: str

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    # -- mapping, per resource ------------------------------------------------
    def _to_entity(self, row: Any) -> E:
        raise NotImplementedError

    def _values(self, entity: E) -> dict[str, Any]:
        raise NotImplementedError

    async def _load_children(self, entities: list[E]) -> None:
        """Fill child collections of many entities with one query per child table."""

    async def _save_children(self, entity: E) -> None:
        pass

    def _base(self) -> sa.Select[Any]:
        return sa.select(self.table)

    # -- generic operations ------------------------------------------------------
    async def get(self, ident: str, *, for_update: bool = False) -> E | None:
        if not is_uuid(ident):
            return None
        stmt = self._base().where(self.table.c.id == ident)
        if for_update:
            stmt = stmt.with_for_update(of=self.table)
        row = (await self._conn.execute(stmt)).first()
        if row is None:
            return None
        entity = self._to_entity(row)
        await self._load_children([entity])
        return entity

    async def get_many(self, ids: Sequence[str]) -> dict[str, E]:
        wanted = _uuids(ids)
        if not wanted:
            return {}
        rows = await self._conn.execute(self._base().where(self.table.c.id.in_(wanted)))
        entities = [self._to_entity(r) for r in rows]
        await self._load_children(entities)
        return {e.id: e for e in entities}  # type: ignore[attr-defined]

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        wanted = _uuids(ids)
        if not wanted:
            return set()
        stmt = self._live(sa.select(self.table.c.id).where(self.table.c.id.in_(wanted)))
        return {str(i) for i in (await self._conn.execute(stmt)).scalars()}

    def existing_ids_statement(self, tag: str, ids: Sequence[str]) -> sa.Select[Any]:
        """(tag, id) of the ids that exist: one part of `UnitOfWork.existing_ids`."""
        return self._live(
            sa.select(sa.literal(tag).label("tag"), self.table.c.id).where(self.table.c.id.in_(ids))
        )

    def _live(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        """Soft-deleted rows (flows) neither exist nor hold their name."""
        if "deleted_at" in self.table.c:
            stmt = stmt.where(self.table.c.deleted_at.is_(None))
        return stmt

    async def page(self, first: int, after: str | None, **filters: Any) -> Page[E]:
        stmt = self._filtered(self._base(), **filters)
        page = await paginate(
            self._conn,
            stmt,
            self.table.c.created_at,
            self.table.c.id,
            first,
            after,
            self._to_entity,
        )
        await self._load_children([item for item, _ in page.items])
        return page

    def _filtered(
        self, stmt: sa.Select[Any], search: str | None = None, **_: Any
    ) -> sa.Select[Any]:
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(self.table.c.name.ilike(f"%{escaped}%", escape="\\"))
        return stmt

    async def add(self, entity: E) -> None:
        await self._conn.execute(self.table.insert().values(**self._values(entity)))
        await self._save_children(entity)

    async def update(self, entity: E) -> None:
        values = self._values(entity)
        ident = values.pop("id")
        values.pop("created_at", None)
        await self._conn.execute(
            self.table.update().where(self.table.c.id == ident).values(**values)
        )
        await self._save_children(entity)

    async def delete(self, ident: str) -> None:
        await self._conn.execute(self.table.delete().where(self.table.c.id == ident))

    async def name_taken(self, name: str, exclude: str | None = None) -> bool:
        stmt = self._live(sa.select(self.table.c.id).where(self.table.c.name == name))
        if exclude is not None:
            stmt = stmt.where(self.table.c.id != exclude)
        return (await self._conn.execute(stmt.limit(1))).first() is not None

    async def referrers(self, ident: str) -> list[str]:
        return []

    async def _names(self, table: sa.Table, ids_stmt: sa.Select[Any], label: str) -> list[str]:
        rows = await self._conn.execute(
            sa.select(table.c.name).where(table.c.id.in_(ids_stmt)).order_by(table.c.name)
        )
        return [f"{label} {name!r}" for name in rows.scalars()]

    async def _flow_referrers(self, column: str, ident: str) -> list[str]:
        ids = sa.select(t.flow_refs.c.flow_id).where(t.flow_refs.c[column] == ident)
        return await self._names(t.flows, ids, "flow")

    async def _load_ordered(
        self, link: sa.Table, owner: str, item: str, owner_ids: Sequence[str]
    ) -> dict[str, list[str]]:
        """The ids a link table lists for each owner, in `position` order."""
        rows = await self._conn.execute(
            sa.select(link.c[owner], link.c[item])
            .where(link.c[owner].in_(owner_ids))
            .order_by(link.c[owner], link.c.position)
        )
        out: dict[str, list[str]] = defaultdict(list)
        for owner_id, item_id in rows:
            out[str(owner_id)].append(str(item_id))
        return out

    async def _save_ordered(
        self, link: sa.Table, owner: str, item: str, owner_id: str, item_ids: Sequence[str]
    ) -> None:
        """Replace the owner's rows of a link table by `item_ids`, in that order."""
        await self._conn.execute(link.delete().where(link.c[owner] == owner_id))
        if item_ids:
            await self._conn.execute(
                link.insert(),
                [{owner: owner_id, item: i, "position": n} for n, i in enumerate(item_ids)],
            )


class SqlProviders(_SqlResource[LlmProvider]):
    table = t.llm_providers

    def _to_entity(self, r: Any) -> LlmProvider:
        sealed = (
            Sealed(r.api_key_key_id, bytes(r.api_key_ciphertext)) if r.api_key_ciphertext else None
        )
        return LlmProvider(
            str(r.id),
            r.name,
            r.provider,
            r.model,
            r.base_url,
            sealed,
            r.version,
            r.created_at,
            r.updated_at,
            [],
            r.timeout_seconds,
            r.max_retries,
        )

    def _values(self, e: LlmProvider) -> dict[str, Any]:
        return {
            "id": e.id,
            "name": e.name,
            "provider": e.provider,
            "model": e.model,
            "base_url": e.base_url,
            "api_key_ciphertext": e.api_key.blob if e.api_key else None,
            "api_key_key_id": e.api_key.key_id if e.api_key else None,
            "version": e.version,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
            "timeout_seconds": e.timeout_seconds,
            "max_retries": e.max_retries,
        }

    async def _load_children(self, entities: list[LlmProvider]) -> None:
        if not entities:
            return
        fallbacks = await self._load_ordered(
            t.llm_provider_fallbacks, "provider_id", "fallback_id", [e.id for e in entities]
        )
        for e in entities:
            e.fallback_ids = fallbacks.get(e.id, [])

    async def _save_children(self, entity: LlmProvider) -> None:
        await self._save_ordered(
            t.llm_provider_fallbacks, "provider_id", "fallback_id", entity.id, entity.fallback_ids
        )

    async def fallback_users(self, ident: str) -> list[str]:
        """Names of the providers that fall back to this one."""
        fb = t.llm_provider_fallbacks
        rows = await self._conn.execute(
            sa.select(t.llm_providers.c.name)
            .join(fb, fb.c.provider_id == t.llm_providers.c.id)
            .where(fb.c.fallback_id == ident)
            .order_by(t.llm_providers.c.name)
        )
        return list(rows.scalars())

    async def referrers(self, ident: str) -> list[str]:
        fallbacks = [f"LLM provider {n!r} (fallback)" for n in await self.fallback_users(ident)]
        agents = await self._names(
            t.agents, sa.select(t.agents.c.id).where(t.agents.c.llm_provider_id == ident), "agent"
        )
        crews = await self._names(
            t.crews,
            sa.select(t.crews.c.id).where(t.crews.c.manager_llm_provider_id == ident),
            "crew",
        )
        flows = await self._flow_referrers("llm_provider_id", ident)
        return agents + crews + fallbacks + flows

    async def sealed_keys(self) -> list[tuple[str, Sealed]]:
        rows = await self._conn.execute(
            sa.select(
                t.llm_providers.c.id,
                t.llm_providers.c.api_key_key_id,
                t.llm_providers.c.api_key_ciphertext,
            )
            .where(t.llm_providers.c.api_key_ciphertext.is_not(None))
            .with_for_update()
        )
        return [(str(r.id), Sealed(r.api_key_key_id, bytes(r.api_key_ciphertext))) for r in rows]

    async def store_key(self, ident: str, sealed: Sealed) -> None:
        await self._conn.execute(
            t.llm_providers.update()
            .where(t.llm_providers.c.id == ident)
            .values(api_key_ciphertext=sealed.blob, api_key_key_id=sealed.key_id)
        )


class SqlTools(_SqlResource[Tool]):
    table = t.tools

    def _to_entity(self, r: Any) -> Tool:
        return Tool(
            str(r.id),
            r.name,
            r.description,
            ToolKind(r.kind),
            r.config,
            r.input_schema,
            r.version,
            r.created_at,
            r.updated_at,
        )

    def _values(self, e: Tool) -> dict[str, Any]:
        return {
            "id": e.id,
            "name": e.name,
            "description": e.description,
            "kind": e.kind.value,
            "config": e.config,
            "input_schema": e.input_schema,
            "version": e.version,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
        }

    def _filtered(
        self,
        stmt: sa.Select[Any],
        search: str | None = None,
        kind: ToolKind | None = None,
        **kw: Any,
    ) -> sa.Select[Any]:
        stmt = super()._filtered(stmt, search)
        if kind is not None:
            stmt = stmt.where(t.tools.c.kind == ToolKind(kind).value)
        return stmt

    async def referrers(self, ident: str) -> list[str]:
        agents = await self._names(
            t.agents,
            sa.select(t.agent_tools.c.agent_id).where(t.agent_tools.c.tool_id == ident),
            "agent",
        )
        return agents + await self._flow_referrers("tool_id", ident)


class SqlAgents(_SqlResource[Agent]):
    table = t.agents

    def _to_entity(self, r: Any) -> Agent:
        return Agent(
            str(r.id),
            r.name,
            r.role,
            r.goal,
            r.backstory,
            str(r.llm_provider_id) if r.llm_provider_id else None,
            [str(i) for i in _json(r.tool_ids) or ()],
            AgentOptions.from_json(r.options or {}),
            r.version,
            r.created_at,
            r.updated_at,
        )

    def _values(self, e: Agent) -> dict[str, Any]:
        return {
            "id": e.id,
            "name": e.name,
            "role": e.role,
            "goal": e.goal,
            "backstory": e.backstory,
            "llm_provider_id": e.llm_provider_id,
            "options": e.options.to_json(),
            "version": e.version,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
        }

    def _base(self) -> sa.Select[Any]:
        # The tool ids in the same statement: one round trip per read, not two.
        return sa.select(
            t.agents, _ordered_ids(t.agent_tools, "agent_id", "tool_id", t.agents.c.id, "tool_ids")
        )

    async def _save_children(self, e: Agent) -> None:
        await self._save_ordered(t.agent_tools, "agent_id", "tool_id", e.id, e.tool_ids)

    async def referrers(self, ident: str) -> list[str]:
        crew_ids = sa.union(
            sa.select(t.crew_agents.c.crew_id).where(t.crew_agents.c.agent_id == ident),
            sa.select(t.crew_tasks.c.crew_id).where(t.crew_tasks.c.agent_id == ident),
            sa.select(t.crews.c.id).where(t.crews.c.manager_agent_id == ident),
        )
        crews = await self._names(t.crews, sa.select(crew_ids.subquery().c[0]), "crew")
        return crews + await self._flow_referrers("agent_id", ident)


class SqlCrews(_SqlResource[Crew]):
    table = t.crews

    def _to_entity(self, r: Any) -> Crew:
        return Crew(
            str(r.id),
            r.name,
            r.process,
            [str(i) for i in _json(r.agent_ids) or ()],
            [CrewTask(d, e, str(a)) for d, e, a in _json(r.tasks) or ()],
            str(r.manager_agent_id) if r.manager_agent_id else None,
            str(r.manager_llm_provider_id) if r.manager_llm_provider_id else None,
            r.version,
            r.created_at,
            r.updated_at,
        )

    def _values(self, e: Crew) -> dict[str, Any]:
        return {
            "id": e.id,
            "name": e.name,
            "process": e.process,
            "manager_agent_id": e.manager_agent_id,
            "manager_llm_provider_id": e.manager_llm_provider_id,
            "version": e.version,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
        }

    def _base(self) -> sa.Select[Any]:
        # Members and tasks in the same statement: one round trip per read, not three.
        ct = t.crew_tasks
        task = sa.func.json_build_array(ct.c.description, ct.c.expected_output, ct.c.agent_id)
        tasks = (
            sa.select(sa.func.json_agg(aggregate_order_by(task, ct.c.position)))
            .where(ct.c.crew_id == t.crews.c.id)
            .scalar_subquery()
            .label("tasks")
        )
        return sa.select(
            t.crews,
            _ordered_ids(t.crew_agents, "crew_id", "agent_id", t.crews.c.id, "agent_ids"),
            tasks,
        )

    async def _save_children(self, e: Crew) -> None:
        # Tasks first: they reference the crew's members.
        await self._conn.execute(t.crew_tasks.delete().where(t.crew_tasks.c.crew_id == e.id))
        await self._save_ordered(t.crew_agents, "crew_id", "agent_id", e.id, e.agent_ids)
        await self._conn.execute(
            t.crew_tasks.insert(),
            [
                {
                    "crew_id": e.id,
                    "position": i,
                    "description": task.description,
                    "expected_output": task.expected_output,
                    "agent_id": task.agent_id,
                }
                for i, task in enumerate(e.tasks)
            ],
        )

    async def referrers(self, ident: str) -> list[str]:
        return await self._flow_referrers("crew_id", ident)


class SqlFlows(_SqlResource[Flow]):
    """`flows` holds the head (name, version); the graph of every version lives in
    `flow_versions`, so reading a flow joins its head version."""

    table = t.flows

    def _base(self) -> sa.Select[Any]:
        v = t.flow_versions
        return (
            sa.select(t.flows, v.c.nodes, v.c.edges)
            .join(v, sa.and_(v.c.flow_id == t.flows.c.id, v.c.version == t.flows.c.version))
            .where(t.flows.c.deleted_at.is_(None))
        )

    def _to_entity(self, r: Any) -> Flow:
        return Flow(
            str(r.id),
            r.name,
            r.description,
            r.version,
            nodes_from(r.nodes),
            edges_from(r.edges),
            r.created_at,
            r.updated_at,
        )

    def _values(self, e: Flow) -> dict[str, Any]:
        return {
            "id": e.id,
            "name": e.name,
            "description": e.description,
            "version": e.version,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
        }

    async def referrers(self, ident: str) -> list[str]:
        return await SqlSchedules.flow_referrers(self._conn, ident)

    async def delete(self, ident: str) -> None:
        await self._conn.execute(t.flow_refs.delete().where(t.flow_refs.c.flow_id == ident))
        await self._conn.execute(
            t.flows.update().where(t.flows.c.id == ident).values(deleted_at=datetime.now(UTC))
        )

    async def add_version(self, flow: Flow, created_by: str | None) -> None:
        await self._conn.execute(
            t.flow_versions.insert().values(
                flow_id=flow.id,
                version=flow.version,
                name=flow.name,
                description=flow.description,
                nodes=nodes_json(flow.nodes),
                edges=edges_json(flow.edges),
                created_by=created_by,
                created_at=flow.updated_at,
            )
        )

    @staticmethod
    def _versions_query() -> sa.Select[Any]:
        """Versions as flows: created when the flow was, updated when written."""
        v = t.flow_versions
        return sa.select(v, t.flows.c.created_at.label("flow_created_at")).join(
            t.flows, t.flows.c.id == v.c.flow_id
        )

    @staticmethod
    def _version_entity(r: Any) -> Flow:
        return Flow(
            str(r.flow_id),
            r.name,
            r.description,
            r.version,
            nodes_from(r.nodes),
            edges_from(r.edges),
            r.flow_created_at,
            r.created_at,
        )

    async def get_version(self, flow_id: str, version: int) -> Flow | None:
        if not is_uuid(flow_id):
            return None
        v = t.flow_versions
        stmt = self._versions_query().where(v.c.flow_id == flow_id, v.c.version == version)
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else self._version_entity(row)

    async def versions(self, flow_id: str) -> list[Flow]:
        v = t.flow_versions
        rows = await self._conn.execute(
            self._versions_query()
            .where(v.c.flow_id == flow_id, t.flows.c.deleted_at.is_(None))
            .order_by(v.c.version.desc())
        )
        return [self._version_entity(r) for r in rows]

    async def set_refs(self, flow_id: str, refs: ReferenceIndex) -> None:
        await self._conn.execute(t.flow_refs.delete().where(t.flow_refs.c.flow_id == flow_id))
        rows = (
            [{"flow_id": flow_id, "agent_id": i} for i in refs.agent_ids]
            + [{"flow_id": flow_id, "crew_id": i} for i in refs.crew_ids]
            + [{"flow_id": flow_id, "tool_id": i} for i in refs.tool_ids]
            + [{"flow_id": flow_id, "llm_provider_id": i} for i in refs.llm_provider_ids]
        )
        if rows:
            full = [
                {"agent_id": None, "crew_id": None, "tool_id": None, "llm_provider_id": None, **r}
                for r in rows
            ]
            await self._conn.execute(t.flow_refs.insert(), full)
