"""mtl: IPT-style multi-task training for low-level vision, and the conflicts between its tasks."""
