"""copilotd's benchmark suite (not tests): ``python -m bench`` runs it all.

Every benchmark starts a real daemon on a temp socket and data dir and drives
it from separate client processes; the baseline, the OpenAI Agents SDK's own
``SQLiteSession``, runs the same work from the same number of processes in the
same run. The results are printed as a table and written as JSON (and a
Markdown table) under ``bench/results/``. See ``docs/benchmarks.md``.
"""
