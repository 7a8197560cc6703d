"""System tests: a real daemon, a real sandbox, real sockets (`make test` runs them after the
unit tests)."""
