"""The FastAPI example app: ``make demo`` serves it in local mode."""
