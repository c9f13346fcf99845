"""User-facing errors: the CLI prints their message as one sentence and exits with `exit_code`;
the API maps `http_status`. Anything else is a bug and keeps its traceback."""


class VideoKVError(Exception):
    """code: a stable snake_case name of the condition (the API's problem `code`)."""

    code = "error"
    exit_code = 2
    http_status = 400
