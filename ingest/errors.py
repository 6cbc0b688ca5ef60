"""ingest's error tree: what its seams raise, whatever the client library underneath.

``IngestError`` is the root. ``BusError`` (``ingest.bus``: ``BusUnavailable``,
``BusRejected``, ``CommitFailed``) covers the event bus and the topic admin;
``RegistryUnavailable`` the system-prompt registry. Kafka's, Redis's and the socket
layer's own exceptions are translated at the seam that calls them, so a caller catches
these and nothing broader.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error ingest raises."""


class RegistryUnavailable(IngestError):
    """The system-prompt registry could not be reached or did not answer in time."""
