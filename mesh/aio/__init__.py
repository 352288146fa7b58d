"""Asyncio building blocks with no I/O of their own: owned background tasks and retry backoff."""
