"""Flow executions: state machines, events, ports and the engine (pure asyncio)."""
