"""The Django example project: ``python -m examples.django_app [port]`` serves it in local mode."""
