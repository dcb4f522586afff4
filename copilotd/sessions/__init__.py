"""The transport-free session core: the service, turns and their scheduler (which see the
service only through ``state.TurnHost``), the sessions' history and lifecycle feed, fan-out,
the model's context window, token budgets and input validation. Nothing here knows gRPC."""
