"""One iteration's history entry and why the loop stopped, for both loops: the distributed
one (trainer.py) and the one inside one task (one_task.py) write the same record."""

from __future__ import annotations

from dataclasses import dataclass

from cfspark.core.errors import TrainingError


@dataclass(frozen=True)
class HalfStep:
    """What one half-step's tasks report, summed over blocks (seconds are task seconds)."""

    data_loss: float
    reg_loss: float
    kernel_seconds: float  # numpy: building the block problem, optimiser steps, losses
    codec_seconds: float = 0.0  # Arrow cells to numpy and back, messages assembled and split
    message_mb: float = 0.0  # factor vectors sent to the other side's blocks
    cache_misses: int = 0  # blocks whose worker did not hold their InBlock (read from the DataFrame)
    moved: float = 0.0  # Σ (prediction change)² over the side's ratings, when the half-step tracks it


def history_entry(
    iteration: int, users: HalfStep, items: HalfStep, *, seconds: float, elapsed: float, user_seconds: float
) -> dict:
    """The entry of one iteration: J after it (the data term with the new X and W, both L2
    terms), its wall seconds, and where the tasks spent their time."""
    return {
        "iteration": iteration,
        "train_loss": items.data_loss + items.reg_loss + users.reg_loss,
        "seconds": round(seconds, 3),
        "elapsed": round(elapsed, 3),
        "kernel_seconds": round(users.kernel_seconds + items.kernel_seconds, 3),
        "codec_seconds": round(users.codec_seconds + items.codec_seconds, 3),
        "message_mb": round(users.message_mb + items.message_mb, 3),
        "cache_misses": users.cache_misses + items.cache_misses,
        "user_seconds": round(user_seconds, 3),
        "user_kernel_seconds": round(users.kernel_seconds, 3),
        "user_codec_seconds": round(users.codec_seconds, 3),
        "item_kernel_seconds": round(items.kernel_seconds, 3),
        "item_codec_seconds": round(items.codec_seconds, 3),
    }


def reached_max_iter(max_iter: int) -> str:
    return f"reached max_iter = {max_iter}"


def converged(history: list[dict], tol: float) -> str | None:
    """The stop reason if the last iteration changed J by less than tol of its value, else None."""
    change = relative_change(history)
    if tol > 0 and change is not None and change < tol:
        return f"converged: the training loss changed by {change:.3g} of its value, under tol = {tol:g}"
    return None


def relative_change(history: list[dict]) -> float | None:
    """|J_prev − J| / |J_prev| over the last two iterations, or None before there are two."""
    if len(history) < 2:
        return None
    before, after = history[-2]["train_loss"], history[-1]["train_loss"]
    return abs(before - after) / max(abs(before), 1e-300)


def diverged(train_loss: float, iteration: int) -> TrainingError:
    """The error for a fit whose training loss stopped being finite."""
    return TrainingError(
        f"the training loss is {train_loss} at iteration {iteration}; lower model.learning_rate or raise model.reg"
    )
