"""Django 6 built-in CSP tests, run in .venv-django6 by tests/test_django6.py (not collected
by the main run: no file here matches ``test_*.py``)."""
