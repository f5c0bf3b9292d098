"""A caller's ids, taken as the model's id type before they meet its tables.

A model's factor tables keep the id type its fit chose: integers, or strings. Fit takes
whole-number doubles and decimals as integers, and (input.id_type "auto") a string column
whose every id is an integer as integers too. The tables a caller passes later (transform's
pairs, a subset, an exclusion, similar*'s queries) often hold the same ids in another type:
a CSV read without a schema gives strings, a StringIndexer doubles. Compared as they are,
Spark casts one side by its own rules, and under ANSI mode the first string that holds no
number fails the whole query with a cast error that names neither column nor model.

So each id is first cast to the model's type, as fit casts it: a number to its integer, a
string to the integer it spells (spaces trimmed). One that has no value of that type (a
string that holds no number, an integer beyond an int model's range) is an id the model
does not know, as an unseen user is. A fractional number still fails the query, by name,
as fit refuses it and Spark ALS's transform does.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cfspark.data.validate import NUMBER_ID_TYPES, not_whole

__all__ = ["as_model_ids"]


def _whole(c: Column, dtype: T.DataType, name: str) -> Column:
    """c as a long; a fractional value fails the query, naming the column and the value."""
    message = F.concat(F.lit(f"column {name!r} has an id that is not a whole number: "), c.cast("string"))
    return F.when(not_whole(c, dtype), F.raise_error(message)).otherwise(c).cast("long")


def as_model_ids(c: Column, got: T.DataType, want: T.DataType, name: str) -> Column:
    """The caller's id column c (of type got, named name) as the model's id type want: null
    where an id has no value of that type, so that it matches no trained id."""
    if isinstance(got, NUMBER_ID_TYPES):
        c, got = _whole(c, got, name), T.LongType()
    if got == want:
        return c
    if isinstance(want, T.StringType):
        return c.cast("string")  # an integer's decimal digits, as fit writes integer ids as strings
    if isinstance(got, T.StringType):
        c = F.trim(c).try_cast("long")
    return c.try_cast(want)
