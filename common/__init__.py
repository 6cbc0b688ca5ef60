"""What every package shares and that belongs to none: background tasks."""
