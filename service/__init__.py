"""tipo-service: TIPO prompt optimization over HTTP."""

__version__ = "0.1.0"
