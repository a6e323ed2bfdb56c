"""Baldur's operational surface: the admin API, the Web Console and the metrics."""
