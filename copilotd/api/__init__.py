"""The gRPC surface: servicers over the core, the one error translator, interceptors
and TCP access (token, TLS)."""
