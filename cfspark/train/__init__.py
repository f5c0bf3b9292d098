"""Distributed alternating training over user blocks and item blocks."""
