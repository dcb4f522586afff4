"""Administration over the core: status, pin, prune, import and export, retention rules.

Returns plain values; the API layer turns them into wire messages."""
