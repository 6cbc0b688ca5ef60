"""Pure policies: placement, context sizing, memory sizing, health."""
