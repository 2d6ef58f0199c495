"""The error a person fixes in their input, shared by the quality library and the task types.

It lives alone so that reading a labeling config at DAG-parse time imports nothing heavy."""


class InputError(ValueError):
    """Input a person has to fix; the message says what is wrong and what is accepted."""
