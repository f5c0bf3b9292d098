"""Paths shared by the tests."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
