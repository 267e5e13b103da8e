"""The Flask example app: ``make demo APP=flask`` serves it in local mode."""
