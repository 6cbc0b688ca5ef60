"""ollamasim package."""
