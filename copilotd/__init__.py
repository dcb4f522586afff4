"""copilotd: a local daemon that keeps chat sessions with language models safe.

copilotd's interfaces are its command line (``copilotd …``) and its gRPC API
(``protos/``); a program talks to it through ``copilot_client`` or through
stubs generated from the protos in any language. Nothing under this package
is importable API: every module is internal and may change in any release.

The underscore rule follows from that: modules and subpackages here carry no
leading underscore (the whole package is private, so an underscore would mark
nothing), while names inside a module that no other module should use do.

The layers, from the top (each may import only the ones below it; the
import-linter contracts in ``pyproject.toml`` enforce the order, and
``docs/architecture.md`` says where a new feature goes):

- ``cli``: the click commands; talks to a running daemon through
  ``copilot_client``'s public modules and imports the runtime only to serve.
- ``runtime``: the process: serve, data-dir locks, systemd, socket
  activation, metrics, logging, periodic sidecars.
- ``api``: gRPC servicers, the one error translator, interceptors, TCP access.
- ``admin``: status, pin, prune, import, the export format, retention rules.
- ``search``: the full-text index of every session (SQLite FTS5) and the
  indexer that keeps it following the log.
- ``sessions``: the transport-free core: service, turns, scheduler, fan-out,
  the model's context window, token budgets, input validation.
- ``providers`` and ``store``: model providers; storage contract, backends,
  committer and purger.
- leaf modules: ``config``, ``errors``, ``events``, ``limits``, ``redaction``.
"""

# A literal, not importlib.metadata.version(): importing importlib.metadata
# costs a daemon's start tens of milliseconds. tests/test_import_budget.py
# checks it against the installed package's version.
__version__ = "0.1.0"

__all__ = ["__version__"]
