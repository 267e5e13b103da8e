"""Django template tag libraries of replay-middleware (``{% load replay %}``)."""
