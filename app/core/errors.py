"""The template errors, shared by the translator, the compiler and the renderer."""

from __future__ import annotations


class _LocatedError(ValueError):
    """Shared shape of template errors: which field, which line, what went wrong.

    The API layer turns these into 400 responses, so the text must be meaningful
    to the template author and must never contain data values or Python internals.
    """

    def __init__(self, field: str, line: int | None, message: str) -> None:
        self.field = field
        self.line = line
        self.message = message
        where = f"{field} line {line}" if line is not None else field
        super().__init__(f"{where}: {message}")


class TemplateError(_LocatedError):
    """Compile/validation problem.

    Attributes: ``field`` ('subject'|'body'), ``line`` (int|None), ``message`` (str).
    ``str(e)`` is human readable, e.g. ``"body line 3: unexpected '}'"``.
    """


class RenderError(_LocatedError):
    """Render-time problem (sandbox violation, undefined nested value...).

    Same attributes as :class:`TemplateError`.  The message never leaks Python
    internals or data values (data may hold OTPs or personal data and these
    errors end up in logs and in FlowX error replies); the original exception is
    deliberately not chained for the same reason.
    """
