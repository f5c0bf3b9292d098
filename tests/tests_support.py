"""Paths and helpers shared by the tests."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def file_bytes(folder) -> dict[str, bytes]:
    """Every file under folder, by its path relative to folder, with its contents."""
    found = {}
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                found[os.path.relpath(os.path.join(root, f), folder)] = fh.read()
    return found
