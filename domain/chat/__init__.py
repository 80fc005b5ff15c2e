"""Chat: sessions bound to a model or an agent, messages, streamed replies."""
