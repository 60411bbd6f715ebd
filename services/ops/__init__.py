"""Operator and developer tooling: the ``livedata`` CLI, the demo and local server launchers.

Not a daemon, and nothing here is imported by the daemons: they depend only on ``shared``.
"""
