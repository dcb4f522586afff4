"""The transport-free session core: the service, turns and their scheduler, fan-out,
the model's context window, token budgets and input validation. Nothing here knows gRPC."""
