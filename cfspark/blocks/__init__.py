"""Ratings packed into blocks (ALS's InBlock and OutBlock) and their binary codec."""
