"""The operators' console at /ui/: alerts and what was done about them, and table changes
tried against the alerts the journal holds, served by the responder's own Flask app."""

from .views import register_console

__all__ = ["register_console"]
