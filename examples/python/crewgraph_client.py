"""Crewgraph from Python with `gql`: queries, a mutation, and a subscription that is
interrupted and resumed with `afterSequence` (no event lost, none twice).

    CREWGRAPH_URL=http://127.0.0.1:8000 CREWGRAPH_TOKEN=<access token> \\
        python examples/python/crewgraph_client.py <flow id> '{"score": 7}' [--stop-after N]

Queries and mutations go over HTTP (`Authorization: Bearer`), the subscription over a
WebSocket (graphql-transport-ws, authenticated by its `connection_init` payload). It
prints one JSON object: who you are, the team's first flows, the run it started, the
event sequences of the first connection and of the resumed one, and the run's end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from gql import Client, gql
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

ME = gql("query Me { me { email role tenant { name } } }")
FLOWS = gql(
    """
    query Flows($first: Int, $after: String) {
      flows(first: $first, after: $after) {
        edges { cursor node { id name version } }
        pageInfo { hasNextPage endCursor }
      }
    }
    """
)
EXECUTE = gql(
    """
    mutation Execute($id: ID!, $inputs: JSON!) {
      executeFlow(id: $id, inputs: $inputs) { id status flowVersion }
    }
    """
)
EXECUTION = gql("query Execution($id: ID!) { execution(id: $id) { id status outputs } }")
EVENTS = gql(
    """
    subscription Events($executionId: ID!, $afterSequence: Int) {
      executionEvents(executionId: $executionId, afterSequence: $afterSequence) {
        sequence type nodeId
      }
    }
    """
)


def http_client(url: str, token: str) -> Client:
    transport = HTTPXAsyncTransport(
        url=f"{url}/graphql", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return Client(transport=transport, fetch_schema_from_transport=False)


def ws_client(url: str, token: str) -> Client:
    transport = WebsocketsTransport(
        url=url.replace("http", "ws", 1) + "/graphql",
        init_payload={"authorization": f"Bearer {token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    return Client(transport=transport, fetch_schema_from_transport=False)


async def follow(
    url: str, token: str, execution_id: str, after: int, stop_after: int | None
) -> list[dict[str, Any]]:
    """Events after `after`; with `stop_after`, hang up after that many (as a dropped
    connection would)."""
    events: list[dict[str, Any]] = []
    async with ws_client(url, token) as session:
        variables = {"executionId": execution_id, "afterSequence": after}
        async for result in session.subscribe(EVENTS, variable_values=variables):
            events.append(result["executionEvents"])
            if stop_after is not None and len(events) >= stop_after:
                break  # leaving the block closes the socket
    return events


async def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow_id")
    parser.add_argument("inputs", nargs="?", default="{}")
    parser.add_argument("--stop-after", type=int, default=3)
    args = parser.parse_args(argv)
    url = os.environ.get("CREWGRAPH_URL", "http://127.0.0.1:8000").rstrip("/")
    token = os.environ["CREWGRAPH_TOKEN"]

    async with http_client(url, token) as session:
        me = (await session.execute(ME))["me"]
        page = (await session.execute(FLOWS, variable_values={"first": 5}))["flows"]
        started = await session.execute(
            EXECUTE, variable_values={"id": args.flow_id, "inputs": json.loads(args.inputs)}
        )
    execution_id = started["executeFlow"]["id"]

    first = await follow(url, token, execution_id, 0, args.stop_after)
    # Reconnect and resume after the last event seen: the server replays what was stored
    # meanwhile, then continues live, up to the terminal event.
    last = first[-1]["sequence"] if first else 0
    resumed = await follow(url, token, execution_id, last, None)

    async with http_client(url, token) as session:
        done = await session.execute(EXECUTION, variable_values={"id": execution_id})
    return {
        "me": me,
        "flows": [edge["node"]["name"] for edge in page["edges"]],
        "execution": execution_id,
        "first": [e["sequence"] for e in first],
        "resumed": [e["sequence"] for e in resumed],
        "types": [e["type"] for e in first + resumed],
        "status": done["execution"]["status"],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
