"""The end-to-end demo: `keyserver demo` (clients/demo/run.py)."""
